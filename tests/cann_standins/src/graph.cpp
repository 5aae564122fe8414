/* Stand-in libgraph.so: ge::AscendString, ge::Graph and the shared stand-in error text. */
#include <cstring>
#include <memory>
#include <string>

#include "graph/ascend_string.h"
#include "graph/graph.h"
#include "standin.h"

namespace ge {
AscendString::AscendString(const char_t *name) : name_(std::make_shared<std::string>(name != nullptr ? name : "")) {}
const char_t *AscendString::GetString() const { return name_ != nullptr ? name_->c_str() : ""; }
size_t AscendString::GetLength() const { return name_ != nullptr ? name_->size() : 0U; }
bool AscendString::operator<(const AscendString &d) const { return std::strcmp(GetString(), d.GetString()) < 0; }
bool AscendString::operator==(const AscendString &d) const { return std::strcmp(GetString(), d.GetString()) == 0; }

Graph::Graph(const char_t *name) { (void)name; }

const std::string *GraphUtilsEx::Model(const Graph &graph) {
  return graph.impl_ != nullptr ? &graph.impl_->model() : nullptr;
}

void GraphUtilsEx::SetModel(Graph &graph, const char *data, size_t size) {
  graph.impl_ = std::make_shared<GraphImpl>(std::string(data, size));
}
}  // namespace ge

namespace {
thread_local std::string t_standin_error;
}

extern "C" void ge_standin_note_error(const char *text) {
  if (!t_standin_error.empty()) {
    t_standin_error += '\n';
  }
  t_standin_error += text;
}

void ge_standin_take_error(std::string &out) {
  out += t_standin_error;
  t_standin_error.clear();
}
