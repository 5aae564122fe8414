/* The one C ABI of ascend_async: the AscendCL runtime subset, the GE session face, and the
 * backend-neutral helpers. Both backends (sim/, cann/) implement acl_rt.h and ge_session.h;
 * common/ implements support.h on top of them. The cdefs/ files are also the cffi cdef text.
 */
#ifndef ASCEND_ASYNC_H
#define ASCEND_ASYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "cdefs/acl_rt.h"
#include "cdefs/ge_session.h"
#include "cdefs/support.h"
#include "cdefs/acl_mdl.h"
#include "cdefs/offline.h"
#include "cdefs/om_build.h"

#ifdef __cplusplus
}
#endif

#endif /* ASCEND_ASYNC_H */
