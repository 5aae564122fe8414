/* CANN only (cann/ge_shim.cpp): GE's offline-model build API (ge/ge_ir_build.h,
 * libge_compiler.so) behind one C call, for `ascend-async compile` on an Ascend host. The sim
 * writes its own container in Python instead (ascend_async/_offline.py). Plain declarations
 * only (cffi cdef input).
 *
 * Parses the ONNX bytes (aclgrphParseONNXFromMem), then aclgrphBuildInitialize(global options,
 * e.g. ge.socVersion), aclgrphBuildModel(build options: input_shape, ge.dynamicBatchSize,
 * ge.dynamicImageSize, ge.dynamicDims, ...), aclgrphSaveModel(output_file: GE appends ".om"),
 * aclgrphBuildFinalize. Returns a graphStatus (0 success) with a message for
 * aa_ge_get_error_msg; UNSUPPORTED when the module was built without libge_compiler.so. */
aa_status aa_om_build(const void *onnx, size_t onnx_size, const aa_option *global_options, size_t n_global,
                      const aa_option *build_options, size_t n_build, const char *output_file);
