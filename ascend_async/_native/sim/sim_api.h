/* The sim module's full C face: the shared ABI plus the sim-only extras (cdefs/sim.h). */
#ifndef AA_SIM_API_H
#define AA_SIM_API_H

#include "../ascend_async.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "../cdefs/sim.h"

#ifdef __cplusplus
}
#endif

#endif /* AA_SIM_API_H */
