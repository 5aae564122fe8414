/* Process-wide sim counters (aa_sim_get_stats). Updated with relaxed atomics from any thread. */
#ifndef AA_SIM_STATS_H
#define AA_SIM_STATS_H

#include "sim_api.h"

extern aa_sim_stats g_sim_stats;

#define SIM_STAT_ADD(field, delta) __atomic_add_fetch(&g_sim_stats.field, (delta), __ATOMIC_RELAXED)

#endif /* AA_SIM_STATS_H */
