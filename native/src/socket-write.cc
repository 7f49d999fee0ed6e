// writev(2) of a list of Buffers on a non-blocking descriptor: NBD replies
// leave this way, without Node's stream machinery, when nothing is queued
// on the socket before them (server/nbd/reply-writer.ts).

#include <errno.h>
#include <limits.h>
#include <napi.h>
#include <sys/uio.h>

#include <vector>

namespace vblk {

// writev(fd, buffers) -> bytes taken (from at most IOV_MAX buffers), or
// -errno (-EAGAIN: the socket had no room). EINTR is retried.
Napi::Value Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || !info[1].IsArray()) {
    Napi::TypeError::New(env, "writev(fd, buffers)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Array list = info[1].As<Napi::Array>();
  uint32_t count = list.Length() < IOV_MAX ? list.Length() : IOV_MAX;
  std::vector<struct iovec> iov(count);
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsTypedArray()) {
      Napi::TypeError::New(env, "writev: every buffer must be a Buffer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array buffer = item.As<Napi::Uint8Array>();
    iov[i].iov_base = buffer.Data();
    iov[i].iov_len = buffer.ByteLength();
  }
  ssize_t n;
  do {
    n = writev(fd, iov.data(), static_cast<int>(count));
  } while (n < 0 && errno == EINTR);
  return Napi::Number::New(env, n < 0 ? -errno : static_cast<double>(n));
}

}  // namespace vblk
