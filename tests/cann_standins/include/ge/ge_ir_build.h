/* Stand-in for CANN's ge/ge_ir_build.h (hicann/ge inc/external/ge/ge_ir_build.h,
 * libge_compiler.so): the part the shim's aa_om_build uses, with the real signatures.
 *  - ModelBufferData { std::shared_ptr<uint8_t> data; uint64_t length; }
 *  - aclgrphBuildInitialize(std::map<AscendString, AscendString> &global_options)
 *  - aclgrphBuildFinalize()
 *  - aclgrphBuildModel(const Graph &, const std::map<AscendString, AscendString> &, ModelBufferData &)
 *  - aclgrphSaveModel(const char_t *output_file, const ModelBufferData &): GE writes
 *    output_file + ".om".
 * The stand-in library builds the simulator's offline-model container (sim/model.c), never an
 * NPU model: see src/ge_compiler.cpp. */
#ifndef AA_STANDIN_GE_GE_IR_BUILD_H
#define AA_STANDIN_GE_GE_IR_BUILD_H

#include <cstdint>
#include <map>
#include <memory>

#include "graph/ascend_string.h"
#include "graph/ge_error_codes.h"
#include "graph/graph.h"
#include "graph/types.h"

namespace ge {
struct ModelBufferData {
  std::shared_ptr<uint8_t> data = nullptr;
  uint64_t length;
};

graphStatus aclgrphBuildInitialize(std::map<AscendString, AscendString> &global_options);
void aclgrphBuildFinalize();
graphStatus aclgrphBuildModel(const ge::Graph &graph, const std::map<AscendString, AscendString> &build_options,
                              ModelBufferData &model);
graphStatus aclgrphSaveModel(const char_t *output_file, const ModelBufferData &model);
}  // namespace ge

#endif
