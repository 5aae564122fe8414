/* Stand-in for CANN's ge/ge_api_v2.h (hicann/ge inc/external/ge/ge_api_v2.h; facts §2.2-2.4),
 * libge_runner_v2.so. Declares exactly the functions and GeSession members the shim calls,
 * with the real signatures; the stand-in libge_runner_v2.so forwards them to the simulator. */
#ifndef AA_STANDIN_GE_API_V2_H
#define AA_STANDIN_GE_API_V2_H

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "exe_graph/runtime/runtime_tensor.h"
#include "ge/ge_allocator.h"
#include "ge/ge_api_error_codes.h"
#include "ge/ge_api_types.h"
#include "graph/ascend_string.h"
#include "graph/graph.h"

namespace ge {
/* ge/ge_graph_compile_summary.h (hicann/ge inc/external/ge): only IsStatic(), which the shim
 * asks to tell a dynamic-shape graph (outputs described after submission) from a static one. */
class CompiledGraphSummary {
 public:
  class SummaryData;
  ~CompiledGraphSummary();
  CompiledGraphSummary &operator=(const CompiledGraphSummary &) & = delete;
  CompiledGraphSummary(const CompiledGraphSummary &) = delete;
  bool IsStatic() const;

  explicit CompiledGraphSummary(bool is_static); /* the stand-in's own constructor */

 private:
  bool is_static_;
};
using CompiledGraphSummaryPtr = std::shared_ptr<CompiledGraphSummary>;

Status GEInitializeV2(const std::map<AscendString, AscendString> &options);
Status GEFinalizeV2();
AscendString GEGetErrorMsgV3();

class GeSession {
 public:
  explicit GeSession(const std::map<AscendString, AscendString> &options);
  ~GeSession();

  Status AddGraph(uint32_t graph_id, const Graph &graph, const std::map<AscendString, AscendString> &options);
  Status RemoveGraph(uint32_t graph_id);
  uint64_t GetSessionId() const;
  Status CompileGraph(uint32_t graph_id);
  Status LoadGraph(const uint32_t graph_id, const std::map<AscendString, AscendString> &options, void *stream) const;
  Status RunGraph(uint32_t graph_id, const std::vector<gert::Tensor> &inputs, std::vector<gert::Tensor> &outputs);
  Status RunGraphWithStreamAsync(uint32_t graph_id, void *stream, const std::vector<gert::Tensor> &inputs,
                                 std::vector<gert::Tensor> &outputs);
  Status RunGraphAsync(uint32_t graph_id, const std::vector<gert::Tensor> &inputs, RunAsyncCallbackV2 callback);
  Status RegisterExternalAllocator(const void *const stream, AllocatorPtr allocator) const;
  Status UnregisterExternalAllocator(const void *const stream) const;
  /* Needs the graph compiled; nullptr on error (facts §2.4). */
  CompiledGraphSummaryPtr GetCompiledGraphSummary(uint32_t graph_id);

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};
}  // namespace ge

#endif
