/* Stand-in libge_compiler.so: GE's offline-model build API (ge/ge_ir_build.h) over the ONNX
 * bytes the stand-in parser kept in the Graph. It cannot compile for an NPU: aclgrphBuildModel
 * writes the simulator's offline-model container (the layout sim/model.c reads), with the gears
 * the build options ask for, so a model built here loads in the stand-in aclmdl (the sim).
 *
 * Options read, with GE's names: global "ge.socVersion" (required, as GE requires a target);
 * build "input_shape" ("name:d,d;name:d,d", -1 where a gear sets the dim), "ge.dynamicBatchSize"
 * ("1,2,4"), "ge.dynamicImageSize" ("h,w;h,w"), "ge.dynamicDims" ("v,v;v,v": one value per -1 of
 * input_shape, in order). */
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ge/ge_ir_build.h"
#include "standin.h"

namespace {
bool g_initialized = false;

using Options = std::map<ge::AscendString, ge::AscendString>;

std::string option(const Options &o, const char *key) {
  auto it = o.find(ge::AscendString(key));
  return it == o.end() ? std::string() : std::string(it->second.GetString());
}

std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, sep)) {
    if (!item.empty()) {
      out.push_back(item);
    }
  }
  return out;
}

bool ints(const std::string &s, std::vector<int64_t> &out) {
  for (const std::string &v : split(s, ',')) {
    char *end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0') {
      return false;
    }
    out.push_back(x);
  }
  return true;
}

ge::graphStatus fail(const std::string &text) {
  ge_standin_note_error(text.c_str());
  return ge::GRAPH_FAILED;
}

void put(std::string &out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xFFU));
  }
}
}  // namespace

namespace ge {
graphStatus aclgrphBuildInitialize(std::map<AscendString, AscendString> &global_options) {
  if (option(global_options, "ge.socVersion").empty()) {
    return fail("aclgrphBuildInitialize: ge.socVersion is required (the target chip)");
  }
  g_initialized = true;
  return GRAPH_SUCCESS;
}

void aclgrphBuildFinalize() { g_initialized = false; }

graphStatus aclgrphBuildModel(const Graph &graph, const std::map<AscendString, AscendString> &build_options,
                              ModelBufferData &model) {
  if (!g_initialized) {
    return fail("aclgrphBuildModel: call aclgrphBuildInitialize first");
  }
  const std::string *onnx = GraphUtilsEx::Model(graph);
  if (onnx == nullptr) {
    return fail("aclgrphBuildModel: the graph has no body");
  }
  std::vector<int64_t> shape; /* every input's dims, in order */
  for (const std::string &entry : split(option(build_options, "input_shape"), ';')) {
    const size_t colon = entry.rfind(':');
    if (colon == std::string::npos || !ints(entry.substr(colon + 1), shape)) {
      return fail("aclgrphBuildModel: bad input_shape entry '" + entry + "'");
    }
  }
  uint32_t kind = 0;
  size_t width = 0;
  std::vector<int64_t> gears;
  const std::string batch = option(build_options, "ge.dynamicBatchSize");
  const std::string hw = option(build_options, "ge.dynamicImageSize");
  const std::string dims = option(build_options, "ge.dynamicDims");
  if (!batch.empty()) {
    kind = 1;
    width = 1;
    if (!ints(batch, gears)) {
      return fail("aclgrphBuildModel: bad ge.dynamicBatchSize '" + batch + "'");
    }
  } else if (!hw.empty()) {
    kind = 2;
    width = 2;
    for (const std::string &g : split(hw, ';')) {
      if (!ints(g, gears) || gears.size() % 2 != 0) {
        return fail("aclgrphBuildModel: bad ge.dynamicImageSize '" + hw + "'");
      }
    }
  } else if (!dims.empty()) {
    kind = 3;
    width = shape.size();
    for (const std::string &g : split(dims, ';')) {
      std::vector<int64_t> values;
      if (!ints(g, values)) {
        return fail("aclgrphBuildModel: bad ge.dynamicDims '" + dims + "'");
      }
      size_t k = 0;
      for (int64_t d : shape) { /* the sim's dims gear lists every dim */
        if (d >= 0) {
          gears.push_back(d);
        } else if (k < values.size()) {
          gears.push_back(values[k++]);
        } else {
          return fail("aclgrphBuildModel: ge.dynamicDims has fewer values than input_shape has -1 dims");
        }
      }
      if (k != values.size()) {
        return fail("aclgrphBuildModel: ge.dynamicDims has more values than input_shape has -1 dims");
      }
    }
  }
  std::string out = "ASCEND_ASYNC simulated offline model\n";
  out.resize(48, '\0');
  put(out, 1, 4);
  put(out, kind, 4);
  put(out, width ? gears.size() / width : 0, 4);
  put(out, width, 4);
  put(out, onnx->size(), 8);
  for (int64_t g : gears) {
    put(out, static_cast<uint64_t>(g), 8);
  }
  out += *onnx;
  std::shared_ptr<uint8_t> data(new uint8_t[out.size()], std::default_delete<uint8_t[]>());
  std::memcpy(data.get(), out.data(), out.size());
  model.data = data;
  model.length = out.size();
  return GRAPH_SUCCESS;
}

graphStatus aclgrphSaveModel(const char_t *output_file, const ModelBufferData &model) {
  if (output_file == nullptr || model.data == nullptr) {
    return fail("aclgrphSaveModel: no file or no model");
  }
  std::ofstream f(std::string(output_file) + ".om", std::ios::binary);
  f.write(reinterpret_cast<const char *>(model.data.get()), static_cast<std::streamsize>(model.length));
  return f ? GRAPH_SUCCESS : fail(std::string("aclgrphSaveModel: cannot write ") + output_file + ".om");
}
}  // namespace ge
