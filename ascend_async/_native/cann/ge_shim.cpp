/* The session ABI (cdefs/ge_session.h) over the real GE v2 API: ge::GeSession (ge/ge_api_v2.h,
 * libge_runner_v2.so), gert::Tensor (exe_graph/runtime/runtime_tensor.h), ge::Allocator /
 * ge::MemBlock (ge/ge_allocator.h) and the ONNX parser (parser/onnx_parser.h,
 * libfmk_onnx_parser.so). See docs/cann.md for what is checked without an NPU.
 *
 * The AscendCL half of the ABI (cdefs/acl_rt.h) is not here: the CANN module links the real
 * libacl_rt.so (or libascendcl.so), whose symbols carry the very names and signatures.
 *
 * Rules kept throughout:
 *  - No C++ exception crosses an extern "C" function or a callback GE calls: every entry point
 *    runs inside guarded(), which turns an exception into AA_GE_FAILED (or PARAM_INVALID) and
 *    stores its text for aa_ge_get_error_msg.
 *  - Tensors GE allocates (a TensorData with a manager) leave GE's ownership explicitly:
 *    TensorData::Release(manager) into an Owner record that aa_tensor_release() ends with
 *    manager(handle, kFreeTensor, nullptr). Tensors without a manager are the caller's memory
 *    (device) or are copied to the heap (host outputs, whose lifetime GE does not promise).
 *  - A dynamic-shape run (GE sizes and places its outputs after submission) returns from submit
 *    at once: its gert::Tensor vectors stay on the heap (a PendingRun, shared by the run's
 *    slots) until aa_session_resolve_outputs describes the slots after the run's event; nothing
 *    here waits for the device on the submitting (event-loop) thread.
 *  - One lock of the shim's own: a GeSession "does not support concurrent execution", so the
 *    submissions into one session (RunGraphWithStreamAsync, RunGraphAsync) are serialized by
 *    aa_session::submit (uncontended unless several threads submit to one session; GE itself
 *    holds only a per-graph mutex there). RunGraph is left to GE, which refuses a concurrent
 *    one (it runs to completion: holding the lock would stall every submission meanwhile).
 */
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "exe_graph/runtime/runtime_tensor.h"
#include "ge/ge_allocator.h"
#include "ge/ge_api_types.h"
#include "ge/ge_api_v2.h"
#include "graph/ascend_string.h"
#ifdef AA_HAVE_GE_COMPILER
#include "ge/ge_ir_build.h"
#endif
#include "graph/graph.h"
#include "parser/onnx_parser.h"

/* The session ABI. acl_rt.h is deliberately not included: only aclrtStream is needed, and it is
 * the same `void *` typedef as in acl/acl_base_rt.h (a repeated identical typedef is valid C++),
 * so the shim also compiles should a GE header ever pull in the real AscendCL headers. */
typedef void *aclrtStream;
extern "C" {
#include "cdefs/ge_session.h"
/* acl/acl_rt.h (libacl_rt.so), same declaration as cdefs/acl_rt.h; used on error paths only. */
int aclrtSynchronizeStream(aclrtStream stream);
}

struct aa_session {
  std::unique_ptr<ge::GeSession> ge;
  std::mutex submit; /* host-side submissions into this session, one at a time (see the top) */
  /* graph id -> GE compiled it as a static graph (CompiledGraphSummary::IsStatic), asked once
   * after the graph's first stream run and forgotten by RemoveGraph. */
  std::mutex static_mu;
  std::map<uint32_t, bool> static_graphs;
};

namespace {

constexpr aa_status kSuccess = AA_GE_SUCCESS;
constexpr aa_status kFailed = static_cast<aa_status>(AA_GE_FAILED);
constexpr aa_status kParamInvalid = static_cast<aa_status>(AA_GE_PARAM_INVALID);

/* ---- error text: the shim's own messages, in front of GE's (GEGetErrorMsgV3) ---------------- */

thread_local std::string t_error;

/* Appends "ascend_async ge_shim: <what>[: <detail>]". Never throws (usable in catch blocks and
 * noexcept paths); out of memory drops the text, the status still tells. */
void note_error(const char *what, const char *detail = nullptr) noexcept {
  try {
    if (!t_error.empty() && t_error.back() != '\n') {
      t_error += '\n';
    }
    t_error += "ascend_async ge_shim: ";
    t_error += what;
    if (detail != nullptr) {
      t_error += ": ";
      t_error += detail;
    }
  } catch (...) {
  }
}

/* For messages built by the caller (inside guarded(), where building them may throw). */
void note_error(const std::string &message) noexcept { note_error(message.c_str()); }

/* Moves GE's pending error text (GEGetErrorMsgV3 returns and clears it) behind ours. */
void pull_ge_error() {
  const ge::AscendString text = ge::GEGetErrorMsgV3();
  const char *s = text.GetString();
  if (s != nullptr && s[0] != '\0') {
    if (!t_error.empty() && t_error.back() != '\n') {
      t_error += '\n';
    }
    t_error.append(s, text.GetLength());
  }
}

/* Runs fn (returning aa_status) with every exception turned into a status and a message. */
template <typename Fn>
aa_status guarded(const char *what, Fn &&fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc &) {
    note_error(what, "out of host memory");
  } catch (const std::exception &e) {
    note_error(what, e.what());
  } catch (...) {
    note_error(what, "unknown C++ exception");
  }
  return kFailed;
}

aa_status fail(aa_status status, const std::string &message) {
  note_error(message);
  return status;
}

/* ---- options --------------------------------------------------------------------------------- */

using Options = std::map<ge::AscendString, ge::AscendString>;

bool to_options(const aa_option *options, size_t n, Options &out, const char *what) {
  if (n > 0 && options == nullptr) {
    note_error(std::string(what) + ": options is NULL but n_options > 0");
    return false;
  }
  for (size_t i = 0; i < n; ++i) {
    if (options[i].key == nullptr || options[i].key[0] == '\0' || options[i].value == nullptr) {
      note_error(std::string(what) + ": option " + std::to_string(i) + " has an empty key or a NULL value");
      return false;
    }
    out[ge::AscendString(options[i].key)] = ge::AscendString(options[i].value);
  }
  return true;
}

/* ---- tensors in ------------------------------------------------------------------------------ */

bool check_tensor(const aa_tensor &t, const char *what, size_t index) {
  if (t.ndim > AA_MAX_DIMS) {
    note_error(std::string(what) + ": tensor " + std::to_string(index) + " has " + std::to_string(t.ndim) +
               " dims (at most 25)");
    return false;
  }
  if (t.placement != AA_PLACEMENT_DEVICE_HBM && t.placement != AA_PLACEMENT_HOST) {
    note_error(std::string(what) + ": tensor " + std::to_string(index) + " has placement " +
               std::to_string(t.placement) + " (0 = device HBM, 1 = host)");
    return false;
  }
  return true;
}

/* A non-owning gert::Tensor over t: origin = storage shape, format {f, f, no expansion}, the
 * dtype, and TensorData(addr, no manager, size, placement). An output slot with NULL addr or
 * size 0 becomes an empty TensorData (null address, size 0): GE allocates it. */
gert::Tensor to_gert(const aa_tensor &t) {
  gert::StorageShape shape;
  for (uint32_t i = 0; i < t.ndim; ++i) {
    shape.MutableOriginShape().AppendDim(t.dims[i]);
    shape.MutableStorageShape().AppendDim(t.dims[i]);
  }
  const auto format = static_cast<ge::Format>(t.format);
  gert::Tensor g(shape, gert::StorageFormat(format, format, gert::ExpandDimsType()),
                 static_cast<ge::DataType>(t.dtype));
  const auto placement = static_cast<gert::TensorPlacement>(t.placement);
  if (t.addr != nullptr && t.size != 0) {
    g.SetData(gert::TensorData(t.addr, nullptr, t.size, placement));
  } else {
    g.SetData(gert::TensorData(nullptr, nullptr, 0U, placement));
  }
  return g;
}

bool to_gert_vector(const aa_tensor *tensors, size_t n, std::vector<gert::Tensor> &out, const char *what) {
  if (n > 0 && tensors == nullptr) {
    note_error(std::string(what) + ": tensor array is NULL but its count is " + std::to_string(n));
    return false;
  }
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!check_tensor(tensors[i], what, i)) {
      return false;
    }
    out.emplace_back(to_gert(tensors[i]));
  }
  return true;
}

/* ---- tensors out: explicit ownership ------------------------------------------------------- */

struct PendingRun;

/* What aa_tensor.owner points at. */
struct Owner {
  enum Kind { kManaged, kHeapCopy, kPending } kind;
  gert::TensorAddress handle;      /* kManaged: what TensorData::Release returned */
  gert::TensorAddrManager manager; /* kManaged: GE's manager for it */
  void *copy;                      /* kHeapCopy: malloc'd bytes */
  PendingRun *pending;             /* kPending: the run whose tensors GE still updates */
};

std::atomic<int64_t> g_live_owners{0};

/* The gert::Tensor vectors of one RunGraphWithStreamAsync call, on the heap so that their
 * address is fixed before GE sees them. A static run uses them during the call only and gives
 * the object back to its thread's spare (no allocation in steady state). A dynamic run's GE
 * writes the output tensors after submission and its migration guide forbids releasing inputs
 * or outputs before the stream is synchronized: the object then outlives the call, owned by
 * the run's pending slots, which all point at its `owner` (kind kPending). Hand-off: built and
 * submitted on the submitting thread; GE updates `outs` when the stream reaches the run; read
 * by aa_session_resolve_outputs (after the run's event) and freed by whichever thread drops the
 * last slot (aa_tensor_release: the loop's or the watcher's), never while the run may be on the
 * device (the ABI's rule for pending slots). */
struct PendingRun {
  Owner owner{Owner::kPending, nullptr, nullptr, nullptr, this};
  std::atomic<size_t> refs{0}; /* slots still pointing at `owner` */
  std::vector<gert::Tensor> ins;
  std::vector<gert::Tensor> outs;
};

thread_local std::unique_ptr<PendingRun> t_spare_run;

void release_owner(Owner *owner) noexcept {
  if (owner == nullptr) {
    return;
  }
  if (owner->kind == Owner::kPending) {
    /* The last slot frees the tensors: GE blocks not taken over go back through their manager. */
    if (owner->pending->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      delete owner->pending;
      g_live_owners.fetch_sub(1, std::memory_order_relaxed);
    }
    return;
  }
  if (owner->kind == Owner::kManaged) {
    if (owner->manager(owner->handle, gert::kFreeTensor, nullptr) != ge::GRAPH_SUCCESS) {
      note_error("aa_tensor_release: GE's tensor manager refused kFreeTensor");
    }
  } else {
    std::free(owner->copy);
  }
  delete owner;
  g_live_owners.fetch_sub(1, std::memory_order_relaxed);
}

void release_all(aa_tensor *tensors, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i) {
    release_owner(static_cast<Owner *>(tensors[i].owner));
    tensors[i].owner = nullptr;
    tensors[i].addr = nullptr;
    tensors[i].size = 0;
  }
}

bool copy_to_heap(const void *addr, size_t size, aa_tensor &out, const char *what) {
  void *copy = std::malloc(size != 0 ? size : 1);
  auto *owner = copy != nullptr ? new (std::nothrow) Owner{Owner::kHeapCopy, nullptr, nullptr, copy, nullptr} : nullptr;
  if (owner == nullptr) {
    std::free(copy);
    note_error(std::string(what) + ": out of host memory copying a host output");
    return false;
  }
  if (size != 0 && addr != nullptr) {
    std::memcpy(copy, addr, size);
  }
  g_live_owners.fetch_add(1, std::memory_order_relaxed);
  out.addr = copy;
  out.size = size;
  out.owner = owner;
  return true;
}

/* Fills `out` from a GE output and takes its memory over. `host_copy`: a host tensor without
 * a manager (or following its header) is copied to the heap, because nothing promises that
 * GE's memory outlives the tensor object. A device tensor without a manager is caller memory
 * (a pre-allocated RunGraphWithStreamAsync slot) and stays unowned. Returns false (with a
 * message; `out` untouched except metadata) if the memory could not be taken over; the tensor
 * keeps its memory then, and its destructor gives it back to GE. */
bool from_gert(gert::Tensor &g, aa_tensor &out, bool host_copy, const char *what) {
  const gert::Shape &shape = g.GetStorageShape();
  const size_t ndim = shape.GetDimNum();
  if (ndim > AA_MAX_DIMS) {
    note_error(std::string(what) + ": GE returned a tensor with " + std::to_string(ndim) + " dims");
    return false;
  }
  out.ndim = static_cast<uint32_t>(ndim);
  for (size_t i = 0; i < AA_MAX_DIMS; ++i) {
    out.dims[i] = i < ndim ? shape.GetDim(i) : 0;
  }
  out.dtype = static_cast<int32_t>(g.GetDataType());
  out.format = static_cast<int32_t>(g.GetStorageFormat());
  const gert::TensorPlacement placement = g.GetPlacement();
  const bool on_host = placement == gert::kOnHost || placement == gert::kFollowing;
  out.placement = on_host ? AA_PLACEMENT_HOST : AA_PLACEMENT_DEVICE_HBM;
  const size_t size = g.GetSize();
  void *const addr = g.GetAddr(); /* through the manager; past the header for kFollowing */
  out.owner = nullptr;

  if (placement == gert::kFollowing) {
    /* The data lives inside the tensor object itself: copy it out. */
    return copy_to_heap(addr, size, out, what);
  }
  gert::TensorAddrManager manager = nullptr;
  const gert::TensorAddress handle = g.MutableTensorData().Release(manager);
  if (manager != nullptr) {
    auto *owner = new (std::nothrow) Owner{Owner::kManaged, handle, manager, nullptr, nullptr};
    if (owner == nullptr) {
      /* hand it back to the tensor (and so to GE) rather than leak it */
      g.MutableTensorData() = gert::TensorData(handle, manager, size, placement);
      note_error(std::string(what) + ": out of host memory");
      return false;
    }
    g_live_owners.fetch_add(1, std::memory_order_relaxed);
    out.addr = addr;
    out.size = size;
    out.owner = owner;
    return true;
  }
  if (on_host && host_copy) {
    return copy_to_heap(addr, size, out, what);
  }
  out.addr = addr; /* caller memory: nothing to own */
  out.size = size;
  return true;
}

/* Converts all of `outs` into `out[0..outs.size())`; on failure releases what was taken over
 * (the rest goes back to GE with the vector). `in_flight`: the stream a submitted run may still
 * write these outputs on; it is synchronized before anything is released. */
bool from_gert_vector(std::vector<gert::Tensor> &outs, aa_tensor *out, bool host_copy, const char *what,
                      aclrtStream in_flight = nullptr) {
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!from_gert(outs[i], out[i], host_copy, what)) {
      if (in_flight != nullptr) {
        (void)aclrtSynchronizeStream(in_flight);
      }
      release_all(out, i);
      return false;
    }
  }
  return true;
}

/* Whether GE compiled `graph_id` as a static graph. A dynamic-shape graph's outputs are
 * described by GE after submission, possibly while RunGraphWithStreamAsync is still returning
 * (an idle stream reaches the run at once): its output tensors must not be read at submit at all,
 * so whether to read them cannot be judged from the tensors. GE's own answer is asked once, after
 * a run (the graph is compiled by then), and cached. No summary counts as dynamic: the pending
 * path is right for both kinds, only slower for a static graph. */
bool graph_is_static(aa_session &session, uint32_t graph_id) {
  {
    std::lock_guard<std::mutex> lock(session.static_mu);
    const auto it = session.static_graphs.find(graph_id);
    if (it != session.static_graphs.end()) {
      return it->second;
    }
  }
  const ge::CompiledGraphSummaryPtr summary = session.ge->GetCompiledGraphSummary(graph_id);
  if (summary == nullptr) {
    (void)ge::GEGetErrorMsgV3(); /* not this call's failure: drop GE's text */
  }
  const bool is_static = summary != nullptr && summary->IsStatic();
  std::lock_guard<std::mutex> lock(session.static_mu);
  session.static_graphs.emplace(graph_id, is_static);
  return is_static;
}

/* ---- the external allocator bridge: ge::Allocator over the aa_allocator C table ---------- */

class TableAllocator;

class TableBlock : public ge::MemBlock {
 public:
  TableBlock(std::shared_ptr<TableAllocator> allocator, void *addr, size_t size, void *handle);
  void *handle() const { return handle_; }

 private:
  /* Keeps the allocator alive while GE still holds one of its blocks, even after it was
   * unregistered (MemBlock itself only holds an Allocator&). */
  std::shared_ptr<TableAllocator> keep_;
  void *handle_;
};

class TableAllocator : public ge::Allocator, public std::enable_shared_from_this<TableAllocator> {
 public:
  explicit TableAllocator(const aa_allocator &table) : table_(table) {}

  ge::MemBlock *Malloc(size_t size) override {
    /* Called by GE on the thread that submits the run; must not throw into GE. */
    try {
      void *addr = nullptr;
      void *handle = table_.alloc(table_.ctx, size, &addr);
      if (handle == nullptr) {
        return nullptr;
      }
      auto *block = new (std::nothrow) TableBlock(shared_from_this(), addr, size, handle);
      if (block == nullptr) {
        table_.free(table_.ctx, handle);
      }
      return block;
    } catch (...) {
      return nullptr;
    }
  }

  void Free(ge::MemBlock *block) override {
    if (block == nullptr) {
      return;
    }
    auto *b = static_cast<TableBlock *>(block);
    table_.free(table_.ctx, b->handle());
    delete b; /* may drop the last reference to *this: nothing after this line */
  }

 private:
  aa_allocator table_;
};

TableBlock::TableBlock(std::shared_ptr<TableAllocator> allocator, void *addr, size_t size, void *handle)
    : ge::MemBlock(*allocator, addr, size), keep_(std::move(allocator)), handle_(handle) {}

/* ---- RunGraphAsync: the C callback behind GE's std::function ------------------------------ */

void deliver_async(aa_run_callback callback, void *user_data, ge::Status status,
                   std::vector<gert::Tensor> &outputs) noexcept {
  try {
    std::vector<aa_tensor> converted(outputs.size());
    if (status == ge::SUCCESS && !from_gert_vector(outputs, converted.data(), true, "RunGraphAsync callback")) {
      callback(user_data, kFailed, nullptr, 0);
      return;
    }
    if (status != ge::SUCCESS) {
      /* GE: process outputs only when the status is SUCCESS; they go back with the vector. */
      callback(user_data, status, nullptr, 0);
      return;
    }
    callback(user_data, status, converted.data(), converted.size());
  } catch (...) {
    note_error("RunGraphAsync callback: C++ exception while converting outputs");
    callback(user_data, kFailed, nullptr, 0);
  }
}

}  // namespace

/* ================================ the extern "C" face ===================================== */

extern "C" {

aa_status aa_ge_initialize(const aa_option *options, size_t n_options) {
  return guarded("GEInitializeV2", [&]() -> aa_status {
    Options opts;
    if (!to_options(options, n_options, opts, "GEInitializeV2")) {
      return kParamInvalid;
    }
    const ge::Status status = ge::GEInitializeV2(opts);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_ge_finalize(void) {
  return guarded("GEFinalizeV2", []() -> aa_status {
    const ge::Status status = ge::GEFinalizeV2();
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

size_t aa_ge_get_error_msg(char *buf, size_t buf_len) {
  try {
    pull_ge_error();
  } catch (...) {
    /* keep what we have */
  }
  const size_t n = t_error.size();
  if (buf == nullptr || buf_len == 0) {
    return n; /* size query: keeps the text for the next call */
  }
  const size_t k = std::min(n, buf_len - 1);
  std::memcpy(buf, t_error.data(), k);
  buf[k] = '\0';
  t_error.clear();
  return n;
}

aa_status aa_session_create(const aa_option *options, size_t n_options, aa_session **out) {
  return guarded("GeSession", [&]() -> aa_status {
    if (out == nullptr) {
      return fail(kParamInvalid, "aa_session_create: out is NULL");
    }
    *out = nullptr;
    Options opts;
    if (!to_options(options, n_options, opts, "GeSession")) {
      return kParamInvalid;
    }
    auto session = std::make_unique<aa_session>();
    /* The constructor never throws. A failed construction leaves session id 0 and reports an
     * error (facts §2.3) -- but 0 may also be a valid first id, so only id 0 *with* new error
     * text counts as failure; text from earlier calls is moved aside first. */
    pull_ge_error();
    const size_t text_before = t_error.size();
    session->ge = std::make_unique<ge::GeSession>(opts);
    if (session->ge->GetSessionId() == 0) {
      pull_ge_error();
      if (t_error.size() > text_before) {
        return fail(kFailed, "GeSession construction failed");
      }
    }
    *out = session.release();
    return kSuccess;
  });
}

aa_status aa_session_destroy(aa_session *session) {
  return guarded("~GeSession", [&]() -> aa_status {
    if (session == nullptr) {
      return fail(kParamInvalid, "aa_session_destroy: session is NULL");
    }
    delete session;
    return kSuccess;
  });
}

aa_status aa_session_add_graph_onnx(aa_session *session, uint32_t graph_id, const void *model, size_t model_size,
                                    const aa_option *options, size_t n_options) {
  return guarded("AddGraph", [&]() -> aa_status {
    if (session == nullptr || model == nullptr || model_size == 0) {
      return fail(kParamInvalid, "aa_session_add_graph_onnx: NULL session or empty model");
    }
    Options opts;
    if (!to_options(options, n_options, opts, "AddGraph")) {
      return kParamInvalid;
    }
    /* A model with external data: GE's parser resolves its locations only when it parses a
     * file (aclgrphParseONNX, against the file's folder); from memory they would resolve against
     * the working directory. Refused rather than read from the wrong place (docs/cann.md). */
    if (opts.count(ge::AscendString("ascend_async.external_data_dir")) != 0U) {
      return fail(kParamInvalid, "AddGraph: graph " + std::to_string(graph_id) +
                                     " keeps tensors in external data; the CANN shim parses ONNX from memory "
                                     "(aclgrphParseONNXFromMem), which cannot read them from the model's folder");
    }
    ge::Graph graph;
    {
      /* Serialized, as the GE triton backend does around the parser. */
      static std::mutex parser_mutex;
      std::lock_guard<std::mutex> lock(parser_mutex);
      const Options parser_params;
      const ge::graphStatus parsed =
          ge::aclgrphParseONNXFromMem(static_cast<const char *>(model), model_size, parser_params, graph);
      if (parsed != ge::GRAPH_SUCCESS) {
        pull_ge_error();
        return fail(kFailed, "aclgrphParseONNXFromMem failed (graphStatus " + std::to_string(parsed) +
                                 ") for graph " + std::to_string(graph_id));
      }
    }
    const ge::Status status = session->ge->AddGraph(graph_id, graph, opts);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_session_remove_graph(aa_session *session, uint32_t graph_id) {
  return guarded("RemoveGraph", [&]() -> aa_status {
    if (session == nullptr) {
      return fail(kParamInvalid, "aa_session_remove_graph: session is NULL");
    }
    const ge::Status status = session->ge->RemoveGraph(graph_id);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    } else {
      std::lock_guard<std::mutex> lock(session->static_mu);
      session->static_graphs.erase(graph_id); /* the id may come back with another graph */
    }
    return status;
  });
}

aa_status aa_session_compile_graph(aa_session *session, uint32_t graph_id) {
  return guarded("CompileGraph", [&]() -> aa_status {
    if (session == nullptr) {
      return fail(kParamInvalid, "aa_session_compile_graph: session is NULL");
    }
    const ge::Status status = session->ge->CompileGraph(graph_id);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_session_load_graph(aa_session *session, uint32_t graph_id, const aa_option *options,
                                size_t n_options, aclrtStream stream) {
  return guarded("LoadGraph", [&]() -> aa_status {
    if (session == nullptr) {
      return fail(kParamInvalid, "aa_session_load_graph: session is NULL");
    }
    Options opts;
    if (!to_options(options, n_options, opts, "LoadGraph")) {
      return kParamInvalid;
    }
    const ge::Status status = session->ge->LoadGraph(graph_id, opts, stream);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_session_run_graph(aa_session *session, uint32_t graph_id, const aa_tensor *inputs, size_t n_inputs,
                               aa_tensor *outputs, size_t *n_outputs) {
  return guarded("RunGraph", [&]() -> aa_status {
    if (session == nullptr || n_outputs == nullptr || (*n_outputs > 0 && outputs == nullptr)) {
      return fail(kParamInvalid, "aa_session_run_graph: NULL session, outputs or n_outputs");
    }
    const size_t capacity = *n_outputs;
    *n_outputs = 0;
    std::vector<gert::Tensor> ins;
    if (!to_gert_vector(inputs, n_inputs, ins, "RunGraph")) {
      return kParamInvalid;
    }
    std::vector<gert::Tensor> outs; /* GE clears and fills it with host tensors it allocated */
    const ge::Status status = session->ge->RunGraph(graph_id, ins, outs);
    if (status != ge::SUCCESS) {
      pull_ge_error();
      return status;
    }
    if (outs.size() > capacity) {
      *n_outputs = outs.size();
      return fail(kParamInvalid, "RunGraph: graph " + std::to_string(graph_id) + " has " +
                                     std::to_string(outs.size()) + " outputs, room for " + std::to_string(capacity));
    }
    if (!from_gert_vector(outs, outputs, true, "RunGraph")) {
      return kFailed;
    }
    *n_outputs = outs.size();
    return kSuccess;
  });
}

aa_status aa_session_run_graph_async(aa_session *session, uint32_t graph_id, const aa_tensor *inputs,
                                     size_t n_inputs, aa_run_callback callback, void *user_data) {
  return guarded("RunGraphAsync", [&]() -> aa_status {
    if (session == nullptr || callback == nullptr) {
      return fail(kParamInvalid, "aa_session_run_graph_async: NULL session or callback");
    }
    /* GE wants the inputs alive until the callback has run: the callback owns them. */
    auto ins = std::make_shared<std::vector<gert::Tensor>>();
    if (!to_gert_vector(inputs, n_inputs, *ins, "RunGraphAsync")) {
      return kParamInvalid;
    }
    ge::RunAsyncCallbackV2 cb = [callback, user_data, ins](ge::Status status, std::vector<gert::Tensor> &outs) {
      deliver_async(callback, user_data, status, outs);
    };
    /* On a mode conflict GE calls cb synchronously with UNSUPPORTED and returns UNSUPPORTED. */
    ge::Status status;
    {
      std::lock_guard<std::mutex> one_at_a_time(session->submit);
      status = session->ge->RunGraphAsync(graph_id, *ins, std::move(cb));
    }
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_session_run_graph_with_stream_async(aa_session *session, uint32_t graph_id, aclrtStream stream,
                                                 const aa_tensor *inputs, size_t n_inputs, aa_tensor *outputs,
                                                 size_t n_outputs) {
  return guarded("RunGraphWithStreamAsync", [&]() -> aa_status {
    if (session == nullptr || (n_outputs > 0 && outputs == nullptr)) {
      return fail(kParamInvalid, "aa_session_run_graph_with_stream_async: NULL session or outputs");
    }
    /* The call's tensors live in a PendingRun at a fixed heap address (see PendingRun): this
     * thread's spare, given back empty on every way out unless a dynamic run keeps it. */
    std::unique_ptr<PendingRun> run = std::move(t_spare_run);
    if (run == nullptr) {
      run = std::make_unique<PendingRun>();
    }
    struct Recycle {
      std::unique_ptr<PendingRun> &held;
      ~Recycle() {
        if (held != nullptr) {
          held->ins.clear();  /* caller memory: nothing to free */
          held->outs.clear(); /* GE blocks not taken over go back to GE here, as before */
          t_spare_run = std::move(held);
        }
      }
    } recycle{run};
    std::vector<gert::Tensor> &ins = run->ins;
    std::vector<gert::Tensor> &outs = run->outs;
    if (!to_gert_vector(inputs, n_inputs, ins, "RunGraphWithStreamAsync")) {
      return kParamInvalid;
    }
    /* All slots empty: pass an empty vector, GE's documented way to have every output
     * allocated and described (shape, format, dtype) from the compiled graph. Otherwise one
     * tensor per slot: caller memory is used as is, empty slots are allocated by GE. */
    const bool all_empty = std::all_of(outputs, outputs + n_outputs,
                                       [](const aa_tensor &t) { return t.addr == nullptr || t.size == 0; });
    if (!all_empty && !to_gert_vector(outputs, n_outputs, outs, "RunGraphWithStreamAsync")) {
      return kParamInvalid;
    }
    ge::Status status;
    {
      std::lock_guard<std::mutex> one_at_a_time(session->submit);
      status = session->ge->RunGraphWithStreamAsync(graph_id, stream, ins, outs);
    }
    if (status != ge::SUCCESS) {
      pull_ge_error(); /* a mode conflict shows here as FAILED + E10062 text */
      return status;
    }
    if (outs.size() != n_outputs) {
      /* GE allocated outputs the caller has no slot for. The run is already enqueued and
       * will write them: wait for the stream before they go back with the vector. */
      const int rc = aclrtSynchronizeStream(stream);
      return fail(kFailed, "RunGraphWithStreamAsync: graph " + std::to_string(graph_id) + " has " +
                               std::to_string(outs.size()) + " outputs, " + std::to_string(n_outputs) +
                               " output slots were passed (the run was submitted; its stream was "
                               "synchronized, aclError " + std::to_string(rc) + ", and the outputs freed)");
    }
    /* A dynamic-shape graph's outputs are sized and placed when the run executes (GE updates
     * the output tensors after submission, maybe already now: they are not read here). Nothing
     * waits on the submitting thread: the run keeps its tensors, every slot points at them
     * (pending) and aa_session_resolve_outputs describes the slots once the run's event
     * completed. Static graphs come back described. */
    if (!graph_is_static(*session, graph_id)) {
      run->refs.store(n_outputs, std::memory_order_relaxed);
      for (size_t i = 0; i < n_outputs; ++i) {
        outputs[i].addr = nullptr;
        outputs[i].size = 0;
        outputs[i].owner = &run->owner;
      }
      g_live_owners.fetch_add(1, std::memory_order_relaxed);
      PendingRun *kept = run.release(); /* owned by the slots from here on */
      (void)kept;
      return kSuccess;
    }
    std::vector<aa_tensor> converted(outputs, outputs + n_outputs);
    if (!from_gert_vector(outs, converted.data(), false, "RunGraphWithStreamAsync", stream)) {
      return kFailed;
    }
    std::copy(converted.begin(), converted.end(), outputs);
    return kSuccess;
  });
}

aa_status aa_session_resolve_outputs(aa_tensor *outputs, size_t n_outputs) {
  return guarded("aa_session_resolve_outputs", [&]() -> aa_status {
    if (n_outputs > 0 && outputs == nullptr) {
      return fail(kParamInvalid, "aa_session_resolve_outputs: outputs is NULL but n_outputs > 0");
    }
    aa_status result = kSuccess;
    for (size_t i = 0; i < n_outputs; ++i) {
      auto *owner = static_cast<Owner *>(outputs[i].owner);
      if (owner == nullptr || owner->kind != Owner::kPending) {
        continue; /* described already (or never pending) */
      }
      std::vector<gert::Tensor> &outs = owner->pending->outs;
      if (i >= outs.size()) {
        note_error("aa_session_resolve_outputs: slot " + std::to_string(i) + " is pending but its run has " +
                   std::to_string(outs.size()) + " outputs (pass the array RunGraphWithStreamAsync filled)");
        result = kParamInvalid;
        continue;
      }
      gert::Tensor &g = outs[i];
      /* GE has described an output once its shape is known and, unless it is empty, its address
       * is set. The stream passed the run (the caller's rule), so anything else means GE has
       * not updated the tensor: fail rather than wait on this (event-loop) thread. */
      const gert::Shape &shape = g.GetStorageShape();
      bool known = shape.GetDimNum() <= AA_MAX_DIMS;
      bool empty = false;
      for (size_t d = 0; known && d < shape.GetDimNum(); ++d) {
        known = shape.GetDim(d) >= 0;
        empty = empty || shape.GetDim(d) == 0;
      }
      if (!known || (!empty && g.GetAddr() == nullptr)) {
        note_error("aa_session_resolve_outputs: output " + std::to_string(i) +
                   " has no " + (known ? "address" : "shape") +
                   " although the stream passed its run: GE has not described it (still pending)");
        result = kFailed;
        continue;
      }
      aa_tensor described = outputs[i];
      if (!from_gert(g, described, false, "aa_session_resolve_outputs")) {
        result = kFailed; /* stays pending; its GE block goes back with the run's tensors */
        continue;
      }
      outputs[i] = described;
      release_owner(owner); /* this slot's share of the run; the last one frees its tensors */
    }
    return result;
  });
}

aa_status aa_session_register_external_allocator(aa_session *session, aclrtStream stream,
                                                 const aa_allocator *allocator) {
  return guarded("RegisterExternalAllocator", [&]() -> aa_status {
    if (session == nullptr || stream == nullptr || allocator == nullptr || allocator->alloc == nullptr ||
        allocator->free == nullptr) {
      return fail(kParamInvalid, "aa_session_register_external_allocator: NULL session, stream or allocator");
    }
    ge::AllocatorPtr bridge = std::make_shared<TableAllocator>(*allocator);
    const ge::Status status = session->ge->RegisterExternalAllocator(stream, bridge);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

aa_status aa_session_unregister_external_allocator(aa_session *session, aclrtStream stream) {
  return guarded("UnregisterExternalAllocator", [&]() -> aa_status {
    if (session == nullptr) {
      return fail(kParamInvalid, "aa_session_unregister_external_allocator: session is NULL");
    }
    const ge::Status status = session->ge->UnregisterExternalAllocator(stream);
    if (status != ge::SUCCESS) {
      pull_ge_error();
    }
    return status;
  });
}

void aa_tensor_release(aa_tensor *tensor) {
  if (tensor == nullptr) {
    return;
  }
  release_owner(static_cast<Owner *>(tensor->owner));
  tensor->owner = nullptr;
  tensor->addr = nullptr;
  tensor->size = 0;
}

/* ---- offline models: GE's build API (cdefs/om_build.h) ----------------------------------------- */

aa_status aa_om_build(const void *onnx, size_t onnx_size, const aa_option *global_options, size_t n_global,
                      const aa_option *build_options, size_t n_build, const char *output_file) {
  return guarded("aa_om_build", [&]() -> aa_status {
#ifdef AA_HAVE_GE_COMPILER
    if (onnx == nullptr || onnx_size == 0 || output_file == nullptr || output_file[0] == '\0') {
      return fail(kParamInvalid, "aa_om_build: no model bytes or no output file");
    }
    Options global;
    Options build;
    if (!to_options(global_options, n_global, global, "aclgrphBuildInitialize") ||
        !to_options(build_options, n_build, build, "aclgrphBuildModel")) {
      return kParamInvalid;
    }
    /* One build at a time: aclgrphBuildInitialize/Finalize are process-wide. */
    static std::mutex build_mutex;
    std::lock_guard<std::mutex> lock(build_mutex);
    ge::Graph graph;
    const Options parser_params;
    ge::graphStatus st = ge::aclgrphParseONNXFromMem(static_cast<const char *>(onnx), onnx_size, parser_params, graph);
    if (st != ge::GRAPH_SUCCESS) {
      pull_ge_error();
      return fail(kFailed, "aclgrphParseONNXFromMem failed (graphStatus " + std::to_string(st) + ")");
    }
    st = ge::aclgrphBuildInitialize(global);
    if (st != ge::GRAPH_SUCCESS) {
      pull_ge_error();
      return fail(kFailed, "aclgrphBuildInitialize failed (graphStatus " + std::to_string(st) + ")");
    }
    ge::ModelBufferData model;
    st = ge::aclgrphBuildModel(graph, build, model);
    if (st == ge::GRAPH_SUCCESS) {
      st = ge::aclgrphSaveModel(output_file, model);
      if (st != ge::GRAPH_SUCCESS) {
        pull_ge_error();
        note_error(std::string("aclgrphSaveModel failed (graphStatus ") + std::to_string(st) + ") for " + output_file);
      }
    } else {
      pull_ge_error();
      note_error("aclgrphBuildModel failed (graphStatus " + std::to_string(st) + ")");
    }
    ge::aclgrphBuildFinalize();
    return st == ge::GRAPH_SUCCESS ? kSuccess : kFailed;
#else
    (void)onnx, (void)onnx_size, (void)global_options, (void)n_global, (void)build_options, (void)n_build,
        (void)output_file;
    return fail(static_cast<aa_status>(AA_GE_UNSUPPORTED),
                "aa_om_build: this module was built without libge_compiler.so (GE's build API); build the .om "
                "with ATC");
#endif
  });
}

}  // extern "C"
