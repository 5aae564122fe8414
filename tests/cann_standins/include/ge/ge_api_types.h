/* Stand-in for CANN's ge/ge_api_types.h (metadef inc/external/ge_common/ge_api_types.h; facts
 * §2.2): Status and the RunGraphAsync callback type RunAsyncCallbackV2. */
#ifndef AA_STANDIN_GE_API_TYPES_H
#define AA_STANDIN_GE_API_TYPES_H

#include <functional>
#include <vector>

#include "exe_graph/runtime/runtime_tensor.h"
#include "ge/ge_api_error_codes.h"

namespace ge {
using RunAsyncCallbackV2 = std::function<void(Status, std::vector<gert::Tensor> &)>;
}  // namespace ge

#endif
