#pragma once

#include <napi.h>
#include <signal.h>

#include <vector>

#include "completions.h"

struct aiocb;

namespace vblk {

class Aio : public Napi::ObjectWrap<Aio> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit Aio(const Napi::CallbackInfo& info);
  ~Aio();

 private:
  struct Slot;
  static Napi::Value Probe(const Napi::CallbackInfo& info);
  static void Reap(void* self);
  Napi::Value Prep(const Napi::CallbackInfo& info);
  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void OperationNotice(struct sigevent* sev, Slot* slot);
  void BatchNotice(struct sigevent* sev);
  void Finish(Slot& slot, int32_t result);
  void Scan();

  int fd_ = -1;
  std::vector<Slot> slots_;
  std::vector<struct aiocb*> batch_;
  CompletionSink sink_;
};

}  // namespace vblk
