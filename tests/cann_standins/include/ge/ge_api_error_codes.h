/* Stand-in for CANN's ge/ge_api_error_codes.h (hicann/ge inc/external/ge/ge_api_error_codes.h;
 * facts §5.1-5.2): the Status values the shim names. */
#ifndef AA_STANDIN_GE_API_ERROR_CODES_H
#define AA_STANDIN_GE_API_ERROR_CODES_H

#include <cstdint>

namespace ge {
using Status = uint32_t; /* ge_api_types.h / ge_error_codes: using Status = uint32_t */
const Status SUCCESS = 0;                /* ge::SUCCESS 0 */
const Status FAILED = 0xFFFFFFFFU;       /* ge::FAILED 4294967295 */
const Status PARAM_INVALID = 1343225857; /* common module, value 1 */
const Status UNSUPPORTED = 1343225956;   /* common module, value 100 */
}  // namespace ge

#endif
