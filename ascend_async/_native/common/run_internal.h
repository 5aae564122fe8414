/* Between run.c (a graph's run) and mdl.c (an offline model's run): both fill one aa_run
 * (cdefs/support.h, cdefs/offline.h); run.c hands a run whose `model` is set to mdl.c. */
#ifndef AA_COMMON_RUN_INTERNAL_H
#define AA_COMMON_RUN_INTERNAL_H

#include "../ascend_async.h"

int aa_mdl_run_submit(aa_run *run);
int aa_mdl_run_collect(aa_run *run);
void aa_mdl_run_release(aa_run *run);

/* A host input staged through page-locked memory into a device block on the run's stream
 * (io->host_block, io->dev_block; the H2D copy is enqueued). 0, or -1 with the failed call
 * recorded in the run. */
int aa_run_stage_input(aa_run *run, aa_run_io *io);

/* An output's device bytes at `src` copied back into a page-locked block (io->host_block;
 * the D2H copy is enqueued on the run's stream). 0, or -1 with the failed call recorded. */
int aa_run_read_back(aa_run *run, aa_run_io *io, const void *src);

/* Inside a function of `aa_run *run` returning int: record the failed call and fail. */
#define FAIL_ACL(api, rc)        \
    do {                         \
        run->failed_api = (api); \
        run->acl_error = (rc);   \
        return -1;               \
    } while (0)

#endif /* AA_COMMON_RUN_INTERNAL_H */
