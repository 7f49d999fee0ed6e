// A librados or librbd call that may block (it waits on the cluster: a
// connect, an open, a snapshot, a lock) runs on libuv's thread pool and
// settles a promise, so the event loop never waits on the network. The
// work returns 0 or a negative errno; a failure rejects with an Error
// whose `errno` is that negative number (the JavaScript side names it)
// and whose message starts with `what` (which the work may make more
// precise, naming the step that failed). The JavaScript objects the work
// uses are held until it is done.

#pragma once

#include <napi.h>

#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace vblk_rbd {

class BlockingCall : public Napi::AsyncWorker {
 public:
  using Work = std::function<int(std::string& what)>;
  using Result = std::function<Napi::Value(Napi::Env)>;

  /** Starts `work` on the thread pool; `result` builds the value the promise resolves with. */
  static Napi::Promise Run(Napi::Env env, std::string what, std::vector<Napi::Object> hold, Work work,
                           Result result = nullptr) {
    auto* call = new BlockingCall(env, std::move(what), std::move(hold), std::move(work), std::move(result));
    Napi::Promise promise = call->deferred_.Promise();
    call->Queue();
    return promise;
  }

  static Napi::Error ErrnoError(Napi::Env env, const std::string& what, int rc) {
    Napi::Error e = Napi::Error::New(env, what + ": " + std::strerror(-rc));
    e.Set("errno", Napi::Number::New(env, rc));
    return e;
  }

 protected:
  void Execute() override { rc_ = work_(what_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (rc_ < 0) {
      deferred_.Reject(ErrnoError(env, what_, rc_).Value());
    } else {
      deferred_.Resolve(result_ ? result_(env) : env.Undefined());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  BlockingCall(Napi::Env env, std::string what, std::vector<Napi::Object> hold, Work work, Result result)
      : Napi::AsyncWorker(env, "vblk.rbd"),
        deferred_(Napi::Promise::Deferred::New(env)),
        what_(std::move(what)),
        work_(std::move(work)),
        result_(std::move(result)) {
    for (auto& o : hold) held_.push_back(Napi::Persistent(o));
  }

  Napi::Promise::Deferred deferred_;
  std::string what_;
  Work work_;
  Result result_;
  std::vector<Napi::ObjectReference> held_;
  int rc_ = 0;
};

/** A string argument, or "" when it is null or undefined. */
inline std::string StringArg(const Napi::Value& v) { return v.IsString() ? v.As<Napi::String>().Utf8Value() : ""; }

}  // namespace vblk_rbd
