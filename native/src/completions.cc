#include "completions.h"

namespace vblk {

CompletionSink::~CompletionSink() { Stop(); }

bool CompletionSink::Start(Napi::Env env, int fd, Napi::Int32Array out, Napi::Function callback,
                           void (*onReadable)(void*), void* owner, const char* name) {
  env_ = env;
  out_ = Napi::Persistent(out);
  callback_ = Napi::Persistent(callback);
  context_ = new Napi::AsyncContext(env, name);
  pairs_ = out.Data();
  capacity_ = out.ElementLength() / 2;
  onReadable_ = onReadable;
  owner_ = owner;
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return false;
  poll_ = new uv_poll_t;
  if (uv_poll_init(loop, poll_, fd) != 0) {
    delete poll_;
    poll_ = nullptr;
    return false;
  }
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, OnPoll);
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  // At environment teardown the loop runs once more; never call into
  // JavaScript from there.
  napi_add_env_cleanup_hook(env, CleanupHook, this);
  return true;
}

void CompletionSink::CleanupHook(void* self) { static_cast<CompletionSink*>(self)->Stop(); }

void CompletionSink::Stop() {
  if (poll_) {
    napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    // The handle outlives this object until libuv has closed it.
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  delete context_;
  context_ = nullptr;
  callback_.Reset();
  out_.Reset();
}

void CompletionSink::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<CompletionSink*>(handle->data);
  if (!self) return;
  Napi::HandleScope scope(self->env_);
  self->onReadable_(self->owner_);
  self->Flush();
}

void CompletionSink::Push(uint64_t id, int32_t result) {
  if (count_ == capacity_) Flush();
  pairs_[2 * count_] = static_cast<int32_t>(id);
  pairs_[2 * count_ + 1] = result;
  count_++;
}

void CompletionSink::Flush() {
  if (count_ == 0 || callback_.IsEmpty()) return;
  size_t n = count_;
  count_ = 0;
  // Counted as in flight until JavaScript has them: the poll handle keeps
  // the loop alive until then.
  Track(-static_cast<int>(n));
  // MakeCallback runs the microtask queue afterwards, so promises resolved
  // by the callback settle before the loop goes back to polling.
  callback_.MakeCallback(env_.Global(), {Napi::Number::New(env_, static_cast<double>(n))}, *context_);
  // No JavaScript frame is below a libuv callback to catch what the
  // callback threw: hand it to the process as an uncaught exception
  // instead of leaving it pending (and lost) in the environment.
  if (env_.IsExceptionPending()) {
    Napi::Error error = env_.GetAndClearPendingException();
    napi_fatal_exception(env_, error.Value());
  }
}

void CompletionSink::Deliver() {
  if (count_ == 0 || callback_.IsEmpty()) return;
  size_t n = count_;
  count_ = 0;
  Track(-static_cast<int>(n));
  callback_.Call({Napi::Number::New(env_, static_cast<double>(n))});
}

void CompletionSink::Track(int delta) {
  int before = inflight_;
  inflight_ += delta;
  if (!poll_) return;
  if (before == 0 && inflight_ > 0) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  if (before > 0 && inflight_ == 0) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

}  // namespace vblk
