// Readability of any file descriptor, from the event loop: kick eventfds
// and the vhost-user socket, which Node's streams cannot read (net.Socket
// refuses an eventfd, and a stream's reads would take file descriptors
// passed with a message away from it).
//
// watchFd(fd, callback) starts a uv_poll for UV_READABLE and calls
// callback(null) whenever the descriptor is readable (level-triggered:
// until it has been drained), and callback(error) if polling fails. libuv
// makes the descriptor non-blocking. The watch keeps the event loop alive
// (like a socket) until unref() or stop(); after stop() no callback runs.
// Stop the watch before closing the descriptor. A descriptor the loop
// already polls (one a net.Socket is reading) cannot be watched: libuv
// refuses it (EEXIST) and watchFd throws.
//
// An exception thrown by the callback goes to process 'uncaughtException'
// like one from any other event-loop callback, instead of staying pending
// in N-API and surfacing at some unrelated later call.

#include <napi.h>
#include <uv.h>

#include <string>

namespace vblk {
namespace {

class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatch",
                       {InstanceMethod<&FdWatch::Stop>("stop"), InstanceMethod<&FdWatch::Ref>("ref"),
                        InstanceMethod<&FdWatch::Unref>("unref")});
  }

  explicit FdWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatch>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber() || !info[1].IsFunction() || info[0].As<Napi::Number>().Int32Value() < 0) {
      Napi::TypeError::New(env, "watchFd(fd >= 0, callback)").ThrowAsJavaScriptException();
      return;
    }
    int fd = info[0].As<Napi::Number>().Int32Value();
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int r = uv_poll_init(loop, poll_, fd);
    if (r != 0) {
      delete poll_;
      poll_ = nullptr;
    } else if ((r = uv_poll_start(poll_, UV_READABLE, OnPoll)) != 0) {
      CloseHandle();
    }
    if (r != 0) {
      Napi::Error e = Napi::Error::New(env, std::string("watchFd(") + std::to_string(fd) + "): " + uv_strerror(r));
      e.Set("code", Napi::String::New(env, uv_err_name(r)));
      e.ThrowAsJavaScriptException();
      return;
    }
    poll_->data = this;
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = new Napi::AsyncContext(env, "vblk.FdWatch");
    // Alive while it watches, so an unreachable watch still calls back.
    Napi::ObjectWrap<FdWatch>::Ref();
    napi_add_env_cleanup_hook(env, CleanupHook, this);
  }

  ~FdWatch() { Halt(); }

 private:
  static void CleanupHook(void* self) { static_cast<FdWatch*>(self)->Halt(); }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<FdWatch*>(handle->data);
    if (!self) return;
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    Napi::Value arg = env.Null();
    if (status < 0) {
      Napi::Error e = Napi::Error::New(env, std::string("polling the descriptor failed: ") + uv_strerror(status));
      e.Set("code", Napi::String::New(env, uv_err_name(status)));
      arg = e.Value();
    }
    self->callback_.MakeCallback(env.Global(), {arg}, *self->context_);
    // `self` may be gone now (stop() in the callback); touch only env.
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());
    }
  }

  // Stops polling and drops the callback; the handle is freed once libuv
  // has closed it. Safe to call twice, and from the environment's teardown.
  void Halt() {
    if (!poll_) return;
    napi_remove_env_cleanup_hook(env_, CleanupHook, this);
    CloseHandle();
    delete context_;
    context_ = nullptr;
    callback_.Reset();
  }

  void CloseHandle() {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (poll_) {
      Halt();
      Napi::ObjectWrap<FdWatch>::Unref();
    }
    return info.Env().Undefined();
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.This();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.This();
  }

  Napi::Env env_;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* context_ = nullptr;
};

}  // namespace

// The class stays hidden: JavaScript gets watchFd(fd, callback) -> FdWatch.
void InitFdWatch(Napi::Env env, Napi::Object exports) {
  auto* constructor = new Napi::FunctionReference(Napi::Persistent(FdWatch::Define(env)));
  Napi::Function watchFd = Napi::Function::New(
      env,
      [](const Napi::CallbackInfo& info) -> Napi::Value {
        auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
        return ctor->New({info[0], info[1]});
      },
      "watchFd", constructor);
  watchFd.AddFinalizer([](Napi::Env, Napi::FunctionReference* ctor) { delete ctor; }, constructor);
  exports.Set("watchFd", watchFd);
}

}  // namespace vblk
