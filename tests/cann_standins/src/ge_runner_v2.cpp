/* Stand-in libge_runner_v2.so: GEInitializeV2 / GEFinalizeV2 / GEGetErrorMsgV3 and ge::GeSession,
 * implemented by forwarding to the simulator's session functions (renamed standin_sim_*, see
 * standin_rename.h). It reproduces the gert::Tensor side of GE that the shim depends on:
 *  - GE-allocated outputs (device blocks of RunGraphWithStreamAsync, host tensors of RunGraph /
 *    RunGraphAsync) come back as TensorData with a manager; kFreeTensor gives the block back to
 *    the sim (standin_sim_aa_tensor_release), kPlusShareCount adds a reference;
 *  - a registered ge::Allocator is reached through the sim's C allocator table: the sim's alloc
 *    calls Allocator::Malloc, its free calls MemBlock::Free (so the shim's bridge sees GE-style
 *    calls);
 *  - RunGraphAsync runs the std::function from the sim's completion thread, outputs in a vector;
 *  - a dynamic-shape RunGraphWithStreamAsync returns with its output tensors not yet written
 *    (null address) and writes their sizes, shapes and addresses into the caller's gert::Tensor
 *    objects only when the stream reaches the run, as GE's RT2 executor updates them after
 *    submission (see LateOutputs).
 * Everything else (graph execution, mode exclusivity, error codes and texts) is the sim's. */
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "standin.h" /* first: renames the sim's session functions before any sim header */
#include "ge/ge_api_v2.h"
#include "sim/runtime.h" /* sim_enqueue: a task the sim runs on its device thread, in stream order */

namespace {

std::atomic<int64_t> g_live_outputs{0};
std::atomic<int64_t> g_live_blocks{0};
std::atomic<int64_t> g_late_pending{0};
/* Ids from 0, as GE's SessionIdManager may hand out: id 0 alone does not mean failure. */
std::atomic<uint64_t> g_next_session_id{0};

/* ---- options ---- */
struct OptionArray {
  explicit OptionArray(const std::map<ge::AscendString, ge::AscendString> &options) {
    for (const auto &kv : options) {
      items.push_back(aa_option{kv.first.GetString(), kv.second.GetString()});
    }
  }
  const aa_option *data() const { return items.empty() ? nullptr : items.data(); }
  size_t size() const { return items.size(); }
  std::vector<aa_option> items;
};

/* ---- tensors ---- */
aa_tensor to_c(const gert::Tensor &g) {
  aa_tensor t;
  std::memset(&t, 0, sizeof(t));
  t.addr = const_cast<void *>(g.GetAddr());
  t.size = g.GetSize();
  t.dtype = static_cast<int32_t>(g.GetDataType());
  t.format = static_cast<int32_t>(g.GetStorageFormat());
  t.placement = g.GetPlacement() == gert::kOnHost ? AA_PLACEMENT_HOST : AA_PLACEMENT_DEVICE_HBM;
  const gert::Shape &shape = g.GetStorageShape();
  t.ndim = static_cast<uint32_t>(shape.GetDimNum());
  for (uint32_t i = 0; i < t.ndim && i < AA_MAX_DIMS; ++i) {
    t.dims[i] = shape.GetDim(i);
  }
  return t;
}

std::vector<aa_tensor> to_c(const std::vector<gert::Tensor> &v) {
  std::vector<aa_tensor> out;
  out.reserve(v.size());
  for (const auto &g : v) {
    out.push_back(to_c(g));
  }
  return out;
}

struct Owned {
  aa_tensor t;
  std::atomic<int> refs;
};

ge::graphStatus manage(gert::TensorAddress addr, gert::TensorOperateType op, void **out) {
  auto *owned = static_cast<Owned *>(addr);
  switch (op) {
    case gert::kGetTensorAddress:
      *out = owned->t.addr;
      return ge::GRAPH_SUCCESS;
    case gert::kFreeTensor:
      if (owned->refs.fetch_sub(1) == 1) {
        standin_sim_aa_tensor_release(&owned->t);
        delete owned;
        g_live_outputs.fetch_sub(1);
      }
      return ge::GRAPH_SUCCESS;
    case gert::kPlusShareCount:
      owned->refs.fetch_add(1);
      return ge::GRAPH_SUCCESS;
    default:
      return ge::GRAPH_FAILED;
  }
}

/* A gert::Tensor for a sim tensor: owned (manager) when the sim allocated it, else a plain view. */
gert::Tensor wrap(const aa_tensor &t) {
  gert::StorageShape shape;
  for (uint32_t i = 0; i < t.ndim && i < AA_MAX_DIMS; ++i) {
    shape.MutableOriginShape().AppendDim(t.dims[i]);
    shape.MutableStorageShape().AppendDim(t.dims[i]);
  }
  const auto format = static_cast<ge::Format>(t.format);
  gert::Tensor g(shape, gert::StorageFormat(format, format, gert::ExpandDimsType()),
                 static_cast<ge::DataType>(t.dtype));
  const auto placement = t.placement == AA_PLACEMENT_HOST ? gert::kOnHost : gert::kOnDeviceHbm;
  if (t.owner != nullptr) {
    auto *owned = new Owned{t, {1}};
    g_live_outputs.fetch_add(1);
    g.SetData(gert::TensorData(owned, manage, t.size, placement));
  } else {
    g.SetData(gert::TensorData(t.addr, nullptr, t.size, placement));
  }
  return g;
}

/* ---- the late output update of a dynamic-shape RunGraphWithStreamAsync ----
 *
 * GE sizes and places a dynamic graph's outputs when the stream reaches the run and writes them
 * into the caller's gert::Tensor objects then ("output sizes are updated after submission"), which
 * is why the caller must keep the tensors alive until the stream is synchronized. The sim places
 * such outputs on its device thread when the run executes and writes them into the slot array it
 * was given. The stand-in gives the sim a slot array of its own (LateOutputs::slots, alive until the
 * update ran) and queues, right behind the graph run on the same stream, a task of the sim's own
 * (sim_enqueue: its body runs on the device thread once every earlier task of the stream ran; its
 * cleanup runs exactly once, also when a fault or a destroyed stream skips it). The body moves
 * the placed outputs into the caller's tensors. So the caller's tensors change exactly when the
 * stream reaches the run, before any event recorded after the run completes; a gate
 * (aa_sim_stream_hold) keeps them unwritten for as long as a test wants. */
struct LateOutputs {
  std::vector<aa_tensor> slots;        /* the sim writes these on its device thread */
  std::vector<gert::Tensor *> targets; /* the caller's tensors (kept in place by the caller) */
};

int late_exec(void *payload, char *err, size_t err_len) {
  auto *late = static_cast<LateOutputs *>(payload);
  /* The sim placed the outputs when it executed the run (the task before this one): take them. */
  if (standin_sim_aa_session_resolve_outputs(late->slots.data(), late->slots.size()) != AA_GE_SUCCESS) {
    std::snprintf(err, err_len, "stand-in GE: the sim has not described a dynamic run's outputs");
    return ACL_ERROR_INTERNAL_ERROR;
  }
  try {
    for (size_t i = 0; i < late->slots.size(); ++i) {
      *late->targets[i] = wrap(late->slots[i]); /* GE-placed blocks: owned by the tensor's manager */
      late->slots[i].owner = nullptr;
    }
  } catch (...) {
    std::snprintf(err, err_len, "stand-in GE: cannot describe a dynamic run's outputs (out of host memory)");
    return ACL_ERROR_BAD_ALLOC;
  }
  return 0;
}

void late_cleanup(void *payload, int executed) {
  (void)executed;
  auto *late = static_cast<LateOutputs *>(payload);
  for (aa_tensor &t : late->slots) {
    if (t.owner != nullptr) {
      standin_sim_aa_tensor_release(&t); /* pending or placed, never handed over (the update was skipped) */
    }
  }
  delete late;
  g_late_pending.fetch_sub(1);
}

/* ---- the allocator table the sim calls ---- */
struct AllocatorHolder {
  ge::AllocatorPtr allocator; /* GE keeps a shared_ptr while registered */
};

void *table_alloc(void *ctx, size_t size, void **addr) {
  auto *holder = static_cast<AllocatorHolder *>(ctx);
  const ge::AllocatorPtr allocator = std::atomic_load(&holder->allocator);
  if (allocator == nullptr) {
    return nullptr;
  }
  ge::MemBlock *block = allocator->Malloc(size);
  if (block == nullptr) {
    return nullptr;
  }
  g_live_blocks.fetch_add(1);
  *addr = block->GetAddr();
  return block;
}

void table_free(void *ctx, void *block) {
  (void)ctx;
  if (block != nullptr) {
    g_live_blocks.fetch_sub(1);
    static_cast<ge::MemBlock *>(block)->Free();
  }
}

std::mutex g_alloc_mutex;
std::map<const void *, AllocatorHolder *> g_registered; /* process-wide, keyed by stream */
std::vector<std::unique_ptr<AllocatorHolder>> g_holders; /* never freed: the sim may keep the table */

/* ---- RunGraphAsync ---- */
struct Pending {
  ge::RunAsyncCallbackV2 callback;
  std::vector<aa_tensor> inputs; /* alive until the callback ran, as the sim requires */
  std::atomic<bool> called{false};
};

void async_trampoline(void *user_data, aa_status status, aa_tensor *outputs, size_t n_outputs) {
  auto *holder = static_cast<std::shared_ptr<Pending> *>(user_data);
  std::shared_ptr<Pending> pending = *holder;
  delete holder;
  pending->called.store(true);
  try {
    std::vector<gert::Tensor> outs;
    outs.reserve(n_outputs);
    for (size_t i = 0; i < n_outputs; ++i) {
      outs.emplace_back(wrap(outputs[i]));
    }
    pending->callback(status, outs);
  } catch (...) {
    ge_standin_note_error("stand-in RunGraphAsync: exception in the callback");
  }
}

}  // namespace

extern "C" int64_t ge_standin_live_outputs(void) { return g_live_outputs.load(); }
extern "C" int64_t ge_standin_live_blocks(void) { return g_live_blocks.load(); }
extern "C" int64_t ge_standin_late_pending(void) { return g_late_pending.load(); }

namespace ge {

Status GEInitializeV2(const std::map<AscendString, AscendString> &options) {
  const OptionArray opts(options);
  return standin_sim_aa_ge_initialize(opts.data(), opts.size());
}

Status GEFinalizeV2() { return standin_sim_aa_ge_finalize(); }

AscendString GEGetErrorMsgV3() {
  std::string text;
  ge_standin_take_error(text);
  char buf[4096];
  if (standin_sim_aa_ge_get_error_msg(buf, sizeof(buf)) > 0 && buf[0] != '\0') {
    if (!text.empty()) {
      text += '\n';
    }
    text += buf;
  }
  return AscendString(text.c_str());
}

class GeSession::Impl {
 public:
  aa_session *sim = nullptr;
  uint64_t id = 0;
  std::mutex mu;
  std::map<uint32_t, size_t> n_outputs; /* per added graph: its net-output count */
};

GeSession::GeSession(const std::map<AscendString, AscendString> &options) : impl_(std::make_shared<Impl>()) {
  const OptionArray opts(options);
  if (standin_sim_aa_session_create(opts.data(), opts.size(), &impl_->sim) == 0 && impl_->sim != nullptr) {
    impl_->id = g_next_session_id.fetch_add(1);
  } else {
    impl_->sim = nullptr;
  }
}

GeSession::~GeSession() {
  if (impl_->sim != nullptr) {
    standin_sim_aa_session_destroy(impl_->sim);
  }
}

uint64_t GeSession::GetSessionId() const { return impl_->id; }

Status GeSession::AddGraph(uint32_t graph_id, const Graph &graph, const std::map<AscendString, AscendString> &options) {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  const std::string *model = GraphUtilsEx::Model(graph);
  if (model == nullptr) {
    ge_standin_note_error("stand-in AddGraph: the graph has no body");
    return FAILED;
  }
  const OptionArray opts(options);
  const Status status = standin_sim_aa_session_add_graph_onnx(impl_->sim, graph_id, model->data(), model->size(),
                                                              opts.data(), opts.size());
  if (status == SUCCESS) {
    const int64_t n = aa_sim_session_graph_outputs(impl_->sim, graph_id);
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->n_outputs.emplace(graph_id, static_cast<size_t>(n)); /* first add wins, as in GE */
  }
  return status;
}

Status GeSession::RemoveGraph(uint32_t graph_id) {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  const Status status = standin_sim_aa_session_remove_graph(impl_->sim, graph_id);
  if (status == SUCCESS) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->n_outputs.erase(graph_id);
  }
  return status;
}

Status GeSession::CompileGraph(uint32_t graph_id) {
  return impl_->sim == nullptr ? FAILED : standin_sim_aa_session_compile_graph(impl_->sim, graph_id);
}

Status GeSession::LoadGraph(const uint32_t graph_id, const std::map<AscendString, AscendString> &options,
                            void *stream) const {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  const OptionArray opts(options);
  return standin_sim_aa_session_load_graph(impl_->sim, graph_id, opts.data(), opts.size(), stream);
}

Status GeSession::RunGraph(uint32_t graph_id, const std::vector<gert::Tensor> &inputs,
                           std::vector<gert::Tensor> &outputs) {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  outputs.clear(); /* GE ignores what the caller passed */
  const std::vector<aa_tensor> ins = to_c(inputs);
  std::vector<aa_tensor> outs(64);
  size_t n = outs.size();
  const Status status =
      standin_sim_aa_session_run_graph(impl_->sim, graph_id, ins.data(), ins.size(), outs.data(), &n);
  if (status != SUCCESS) {
    return status;
  }
  outputs.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    outputs.emplace_back(wrap(outs[i]));
  }
  return SUCCESS;
}

Status GeSession::RunGraphWithStreamAsync(uint32_t graph_id, void *stream, const std::vector<gert::Tensor> &inputs,
                                          std::vector<gert::Tensor> &outputs) {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  if (outputs.empty()) {
    /* GE creates one tensor per net output and allocates them all. */
    std::lock_guard<std::mutex> lock(impl_->mu);
    const auto it = impl_->n_outputs.find(graph_id);
    if (it != impl_->n_outputs.end()) {
      outputs.resize(it->second);
    }
  }
  const std::vector<aa_tensor> ins = to_c(inputs);
  /* The sim's slot array lives on the heap: for a dynamic graph the sim writes it on its device
   * thread after this returns (LateOutputs). */
  auto late = std::make_unique<LateOutputs>();
  late->slots = to_c(outputs);
  std::vector<aa_tensor> &outs = late->slots;
  const Status status = standin_sim_aa_session_run_graph_with_stream_async(impl_->sim, graph_id, stream, ins.data(),
                                                                           ins.size(), outs.data(), outs.size());
  if (status != SUCCESS) {
    return status;
  }
  /* GE runs a graph that is not static (an unknown dim) on its dynamic-shape executor, which
   * describes the outputs after submission, even when the sim could size them now. (The sim
   * returns a value-dependent run's slots pending and never writes them from its device
   * thread, so they are read here without a race.) */
  const bool dynamic = aa_sim_session_graph_is_static(impl_->sim, graph_id) != 1;
  if (!dynamic) {
    for (size_t i = 0; i < outs.size(); ++i) {
      outputs[i] = wrap(outs[i]); /* GE fills the slots it allocated; caller slots stay views */
    }
    return SUCCESS;
  }
  /* Dynamic: the caller's tensors are left as they are (empty ones keep a null address) until
   * the stream reaches the run. */
  for (gert::Tensor &t : outputs) {
    late->targets.push_back(&t);
  }
  g_late_pending.fetch_add(1);
  LateOutputs *payload = late.release();
  const aclError rc = sim_enqueue(stream, 0, late_exec, late_cleanup, payload);
  if (rc != ACL_SUCCESS) {
    /* Cannot happen after the sim queued the run on the same stream; if it does, wait for the
     * run so that its slots can be freed, and fail the call. */
    (void)aclrtSynchronizeStream(stream);
    late_cleanup(payload, 0);
    ge_standin_note_error("stand-in RunGraphWithStreamAsync: cannot queue the output update on the stream");
    return FAILED;
  }
  return SUCCESS;
}

Status GeSession::RunGraphAsync(uint32_t graph_id, const std::vector<gert::Tensor> &inputs,
                                RunAsyncCallbackV2 callback) {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  auto pending = std::make_shared<Pending>();
  pending->callback = std::move(callback);
  pending->inputs = to_c(inputs);
  auto *holder = new std::shared_ptr<Pending>(pending);
  const Status status = standin_sim_aa_session_run_graph_async(
      impl_->sim, graph_id, pending->inputs.data(), pending->inputs.size(), async_trampoline, holder);
  if (status != SUCCESS && !pending->called.load()) {
    delete holder; /* the sim refused it without calling back */
  }
  return status;
}

Status GeSession::RegisterExternalAllocator(const void *const stream, AllocatorPtr allocator) const {
  if (impl_->sim == nullptr || stream == nullptr || allocator == nullptr) {
    return FAILED;
  }
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  g_holders.push_back(std::make_unique<AllocatorHolder>());
  AllocatorHolder *holder = g_holders.back().get();
  holder->allocator = std::move(allocator);
  const aa_allocator table{holder, table_alloc, table_free};
  const Status status =
      standin_sim_aa_session_register_external_allocator(impl_->sim, const_cast<void *>(stream), &table);
  if (status != SUCCESS) {
    std::atomic_store(&holder->allocator, ge::AllocatorPtr());
    return status;
  }
  auto it = g_registered.find(stream);
  if (it != g_registered.end()) {
    std::atomic_store(&it->second->allocator, ge::AllocatorPtr()); /* last registration wins */
  }
  g_registered[stream] = holder;
  return SUCCESS;
}

CompiledGraphSummary::CompiledGraphSummary(bool is_static) : is_static_(is_static) {}
CompiledGraphSummary::~CompiledGraphSummary() = default;
bool CompiledGraphSummary::IsStatic() const { return is_static_; }

CompiledGraphSummaryPtr GeSession::GetCompiledGraphSummary(uint32_t graph_id) {
  if (impl_->sim == nullptr) {
    return nullptr;
  }
  const int is_static = aa_sim_session_graph_is_static(impl_->sim, graph_id);
  if (is_static < 0) {
    return nullptr;
  }
  return std::make_shared<CompiledGraphSummary>(is_static == 1);
}

Status GeSession::UnregisterExternalAllocator(const void *const stream) const {
  if (impl_->sim == nullptr) {
    return FAILED;
  }
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  const Status status = standin_sim_aa_session_unregister_external_allocator(impl_->sim, const_cast<void *>(stream));
  auto it = g_registered.find(stream);
  if (status == SUCCESS && it != g_registered.end()) {
    std::atomic_store(&it->second->allocator, ge::AllocatorPtr());
    g_registered.erase(it);
  }
  return status;
}

}  // namespace ge
