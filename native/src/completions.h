// Completion delivery shared by the io_uring and POSIX AIO rings: a file
// descriptor watched by uv_poll (an eventfd, or a kqueue), completions
// gathered into an Int32Array of (id, result) pairs that JavaScript owns,
// and one JavaScript callback per batch. The poll handle keeps the event
// loop alive only while operations are in flight.
#pragma once

#include <napi.h>
#include <uv.h>
#include <cstdint>

namespace vblk {

class CompletionSink {
 public:
  CompletionSink() = default;
  ~CompletionSink();

  // Starts watching `fd`; `onReadable` runs on the loop thread whenever it
  // is readable. `out` receives pairs, `callback(count)` is called per batch.
  bool Start(Napi::Env env, int fd, Napi::Int32Array out, Napi::Function callback,
             void (*onReadable)(void* owner), void* owner, const char* name);
  void Stop();

  // Records one completion; flushes to JavaScript when the array is full.
  void Push(uint64_t id, int32_t result);
  // Hands everything recorded so far to JavaScript, from the poll callback.
  void Flush();
  // The same from inside a call JavaScript made (no new async context).
  void Deliver();

  void Track(int delta);
  int Inflight() const { return inflight_; }

 private:
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void CleanupHook(void* self);

  Napi::Env env_ = Napi::Env(nullptr);
  uv_poll_t* poll_ = nullptr;
  Napi::Reference<Napi::Int32Array> out_;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* context_ = nullptr;
  int32_t* pairs_ = nullptr;
  size_t capacity_ = 0;
  size_t count_ = 0;
  int inflight_ = 0;
  void (*onReadable_)(void*) = nullptr;
  void* owner_ = nullptr;
};

}  // namespace vblk
