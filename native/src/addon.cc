// vblk's native addon: io_uring and POSIX AIO rings, aligned buffers,
// shared guest memory and file descriptor watches for vhost-user, and
// writev for NBD replies.
#include <napi.h>

#include "aio.h"
#include "uring.h"

namespace vblk {
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info);
Napi::Value AddressModulo(const Napi::CallbackInfo& info);
Napi::Value MapShared(const Napi::CallbackInfo& info);
Napi::Value Writev(const Napi::CallbackInfo& info);
void InitFdWatch(Napi::Env env, Napi::Object exports);
}  // namespace vblk

static Napi::Object InitAll(Napi::Env env, Napi::Object exports) {
  vblk::Uring::Init(env, exports);
  vblk::Aio::Init(env, exports);
  exports.Set("alignedBuffer", Napi::Function::New(env, vblk::AlignedBuffer));
  exports.Set("addressModulo", Napi::Function::New(env, vblk::AddressModulo));
  exports.Set("mapShared", Napi::Function::New(env, vblk::MapShared));
  exports.Set("writev", Napi::Function::New(env, vblk::Writev));
  vblk::InitFdWatch(env, exports);
  return exports;
}

NODE_API_MODULE(vblk_native, InitAll)
