// Memory aligned for O_DIRECT: Buffers whose address is a multiple of the
// alignment asked for (Node's own Buffers make no such promise), freed by
// a finalizer when the Buffer is collected.

#include <napi.h>
#include <stdlib.h>

#include <cstdint>

namespace vblk {

// alignedBuffer(size, alignment) -> Buffer
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t size = info[0].As<Napi::Number>().Uint32Value();
  size_t alignment = info[1].As<Napi::Number>().Uint32Value();
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) {
    Napi::RangeError::New(env, "alignment must be a power of two").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* p = nullptr;
  // posix_memalign(…, 0) may return NULL; always ask for at least one byte.
  if (posix_memalign(&p, alignment, size ? size : 1) != 0) {
    Napi::Error::New(env, "posix_memalign failed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), size, [](Napi::Env, uint8_t* d) { free(d); });
}

// addressModulo(buffer, n) -> the buffer's address modulo n (for tests and checks).
Napi::Value AddressModulo(const Napi::CallbackInfo& info) {
  Napi::Uint8Array buf = info[0].As<Napi::Uint8Array>();
  uint32_t n = info[1].As<Napi::Number>().Uint32Value();
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(buf.Data()) % n));
}

}  // namespace vblk
