#pragma once

#include <napi.h>

#include "completions.h"

namespace vblk {

class Uring : public Napi::ObjectWrap<Uring> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit Uring(const Napi::CallbackInfo& info);
  ~Uring();

 private:
  struct Ring;
  static Napi::Value Probe(const Napi::CallbackInfo& info);
  static void Reap(void* self);
  static void ReapQueue(Uring* self);
  Napi::Value Prep(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value TryRead(const Napi::CallbackInfo& info);
  Napi::Value TryWrite(const Napi::CallbackInfo& info);
  Napi::Value Entries(const Napi::CallbackInfo& info);

  Ring* ring_ = nullptr;
  CompletionSink sink_;
};

}  // namespace vblk
