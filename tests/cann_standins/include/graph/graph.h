/* Stand-in for CANN's graph/graph.h (metadef inc/external/graph/graph.h).
 * The shim only default-constructs a Graph, hands it to aclgrphParseONNXFromMem and then to
 * GeSession::AddGraph. As in the real class, the body is a shared_ptr<GraphImpl> reachable by
 * the friend GraphUtilsEx; the stand-in GraphImpl carries the ONNX bytes. */
#ifndef AA_STANDIN_GRAPH_GRAPH_H
#define AA_STANDIN_GRAPH_GRAPH_H

#include <memory>

#include "graph/ascend_string.h"
#include "graph/types.h"

namespace ge {
class GraphImpl;
using GraphImplPtr = std::shared_ptr<GraphImpl>;

class Graph {
  friend class GraphUtilsEx;

 public:
  explicit Graph(const char_t *name);
  Graph() = default;
  ~Graph() = default;

 private:
  GraphImplPtr impl_{nullptr};
};
}  // namespace ge

#endif
