/* Force-included (gcc -include) into the simulator's C sources when they are built as the
 * stand-in libacl_rt.so, and into the stand-in GE sources before any ascend_async header.
 *
 * The sim implements the session ABI under the same names the GE shim exports (aa_session_*,
 * aa_ge_*, aa_tensor_release). In the stand-in world the shim must be the only owner of those
 * names, so the sim's copies are renamed standin_sim_*: the stand-in libge_runner_v2.so calls
 * them by the new names, and nothing can resolve a shim call to the sim (or the reverse). The
 * AscendCL names (acl*) and the sim extras (aa_sim_*) keep their names. */
#ifndef AA_STANDIN_RENAME_H
#define AA_STANDIN_RENAME_H

#define aa_ge_initialize standin_sim_aa_ge_initialize
#define aa_ge_finalize standin_sim_aa_ge_finalize
#define aa_ge_get_error_msg standin_sim_aa_ge_get_error_msg
#define aa_session_create standin_sim_aa_session_create
#define aa_session_destroy standin_sim_aa_session_destroy
#define aa_session_add_graph_onnx standin_sim_aa_session_add_graph_onnx
#define aa_session_remove_graph standin_sim_aa_session_remove_graph
#define aa_session_compile_graph standin_sim_aa_session_compile_graph
#define aa_session_load_graph standin_sim_aa_session_load_graph
#define aa_session_run_graph standin_sim_aa_session_run_graph
#define aa_session_run_graph_async standin_sim_aa_session_run_graph_async
#define aa_session_run_graph_with_stream_async standin_sim_aa_session_run_graph_with_stream_async
#define aa_session_register_external_allocator standin_sim_aa_session_register_external_allocator
#define aa_session_unregister_external_allocator standin_sim_aa_session_unregister_external_allocator
#define aa_session_resolve_outputs standin_sim_aa_session_resolve_outputs
#define aa_tensor_release standin_sim_aa_tensor_release

#endif
