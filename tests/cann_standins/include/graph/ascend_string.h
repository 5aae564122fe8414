/* Stand-in for CANN's graph/ascend_string.h (metadef inc/external/graph/ascend_string.h).
 * Declares the members the shim uses; defined in the stand-in libgraph.so. */
#ifndef AA_STANDIN_GRAPH_ASCEND_STRING_H
#define AA_STANDIN_GRAPH_ASCEND_STRING_H

#include <cstddef>
#include <memory>
#include <string>

#include "graph/types.h"

namespace ge {
class AscendString {
 public:
  AscendString() = default;
  AscendString(const char_t *name); /* implicit, as in the real header */
  ~AscendString() = default;
  const char_t *GetString() const;
  size_t GetLength() const;
  bool operator<(const AscendString &d) const; /* std::map key */
  bool operator==(const AscendString &d) const;

 private:
  std::shared_ptr<std::string> name_; /* the real class also holds a shared_ptr<std::string> */
};
}  // namespace ge

#endif
