/* Offline models on the run path (common/mdl.c): an aa_run whose `model` is set runs an
 * offline model with aclmdlExecuteAsync instead of a GE graph. Public ABI only (acl_rt.h,
 * acl_mdl.h), so it runs on both backends. Plain declarations only (cffi cdef input).
 *
 * aa_run_submit / aa_run_collect / aa_run_release dispatch to it when run->model is non-NULL:
 *  - submit: stage the inputs as for a graph; fill the descriptor's datasets (made once, on
 *    its first run: one buffer per model input, the gear input included, and one per output);
 *    write the gear (aclmdlSetDynamicBatchSize / SetDynamicHWSize / SetInputDynamicDims) into
 *    a device block for the gear input; take one device block per output of the model's
 *    maximum size (aclmdlGetOutputSizeByIndex) from the device pool; aclmdlExecuteAsync; read
 *    each output's shape for this gear (aclmdlGetCurOutputDims). When every output's shape is
 *    known, the D2H copies are enqueued now; otherwise `dynamic` is set and aa_run_collect
 *    describes the outputs from the output dataset's tensor descs after the event.
 *  - release: the staging blocks, the gear block and the output blocks go back to the pools
 *    (an output handed to a DeviceTensor has its dev_block cleared: the tensor owns it).
 * Threads: whoever submits owns the descriptor until the run's token comes back (as for
 * graphs); the modelId must not run on another stream at the same time (acl_mdl.h).
 */
typedef struct aa_mdl_run {
    uint32_t model_id;
    aclmdlDesc *desc;        /* the model's description (aclmdlGetDesc), shared by descriptors */
    size_t n_model_inputs;   /* the model's inputs, the gear input included */
    int64_t gear_input;      /* index of the gear input among the model's inputs, -1: none */
    int32_t gear_kind;       /* AA_GEAR_* */
    uint64_t batch;          /* AA_GEAR_BATCH: this run's batch size */
    uint64_t height, width;  /* AA_GEAR_HW */
    aclmdlIODims dims;       /* AA_GEAR_DIMS: every input's dims, in order */
    const size_t *out_sizes; /* per output: the buffer size (aclmdlGetOutputSizeByIndex) */
    /* made on the first submit, destroyed by aa_mdl_run_destroy */
    aclmdlDataset *input;
    aclmdlDataset *output;
    void *gear_block;        /* this run's gear input block (device pool) */
} aa_mdl_run;

#define AA_GEAR_NONE 0
#define AA_GEAR_BATCH 1
#define AA_GEAR_HW 2
#define AA_GEAR_DIMS 3

/* Destroys the datasets and their buffers (not the desc). Call once no run uses them. */
void aa_mdl_run_destroy(aa_mdl_run *m);
