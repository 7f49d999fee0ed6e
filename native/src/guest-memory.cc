// Guest memory a vhost-user front end shares as file descriptors, mapped
// MAP_SHARED and handed to JavaScript as external ArrayBuffers with no copy.
//
// One mmap per region, exposed as windows of at most 1 GiB each: Node 20
// caps an ArrayBuffer at buffer.constants.MAX_LENGTH (4 GiB), and a window
// of 1 GiB keeps every index inside V8's small-integer range, while a
// request only rarely straddles a window boundary.
//
// The mapping is shared by its windows and by the unmap function: each
// holds one reference, and the last one released (a window collected, the
// function collected) munmaps it. unmap() cannot munmap at once, because
// a view, or an I/O the kernel still carries out for one, may touch the
// memory afterwards, and a freed range can be handed to the next mmap. So
// it lays a placeholder over the same addresses (MAP_FIXED): an empty
// memfd of the same size, mapped shared. The guest's pages are released at
// once; the views stay valid objects that read zeros and write into the
// placeholder (pages allocated only if written); the addresses are
// released when the last view is collected. The placeholder is a file and
// not anonymous private memory so that it is not charged against the
// commit limit (vm.overcommit_memory=2 would refuse a large one).
//
// A region must lie inside its file: touching a page of a shared mapping
// past the end of the file raises SIGBUS, so mapShared checks the size.
// A front end could still shrink the file afterwards; QEMU seals its
// memfds against that (F_SEAL_SHRINK).

#include <errno.h>
#include <napi.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace vblk {
namespace {

constexpr double kMaxWindow = 1 << 30;
constexpr double kMaxSafeInteger = 9007199254740991.0;

struct Mapping {
  uint8_t* base = nullptr;  // what mmap returned (the file offset rounded down)
  size_t mapped = 0;        // bytes mmap'd
  int prot = 0;
  int refs = 0;  // live windows + the unmap function
  bool replaced = false;
};

void Release(Mapping* m) {
  if (--m->refs > 0) return;
  munmap(m->base, m->mapped);
  delete m;
}

void ReleaseFromFinalizer(napi_env, void*, void* hint) { Release(static_cast<Mapping*>(hint)); }

// Swaps the guest's pages for an empty placeholder at the same addresses.
bool Replace(Mapping* m) {
  if (m->replaced) return true;
#ifdef __linux__
  int scratch = memfd_create("vblk-unmapped-guest-memory", MFD_CLOEXEC);
  if (scratch < 0) return false;
  bool ok = ftruncate(scratch, static_cast<off_t>(m->mapped)) == 0 &&
            mmap(m->base, m->mapped, m->prot, MAP_SHARED | MAP_FIXED, scratch, 0) != MAP_FAILED;
  close(scratch);  // the mapping keeps the file
#else
  bool ok = mmap(m->base, m->mapped, m->prot, MAP_PRIVATE | MAP_ANON | MAP_FIXED | MAP_NORESERVE, -1, 0) != MAP_FAILED;
#endif
  m->replaced = ok;
  return ok;
}

bool IsCount(const Napi::Value& v, double min, double max) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  return d >= min && d <= max && d == static_cast<double>(static_cast<int64_t>(d));
}

Napi::Value Fail(Napi::Env env, const std::string& message, int errnum = 0) {
  Napi::Error e = Napi::Error::New(env, errnum ? message + ": " + strerror(errnum) : message);
  if (errnum) e.Set("errno", Napi::Number::New(env, -errnum));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value Unmap(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Replace(static_cast<Mapping*>(info.Data())));
}

}  // namespace

// mapShared(fd, offset, length, writable, windowSize = 1 GiB)
//   -> { windows: ArrayBuffer[], windowSize, unmap(): boolean }
// Window i covers [i * windowSize, min(length, (i + 1) * windowSize)) of
// the region. writable=false maps the file copy-on-write: views can be
// written without faulting, but writes stay in this process. The caller
// keeps its descriptor (and may close it: the mapping holds the file).
// unmap() releases the file's pages at once and returns true; false means
// no placeholder could be made and the pages stay mapped until the views
// are collected. Calling it again is harmless.
Napi::Value MapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsCount(info[0], 0, INT32_MAX) || !IsCount(info[1], 0, kMaxSafeInteger) ||
      !IsCount(info[2], 1, kMaxSafeInteger) || !info[3].IsBoolean() ||
      !(info[4].IsUndefined() || IsCount(info[4], 1, kMaxWindow))) {
    Napi::TypeError::New(env,
                         "mapShared(fd, offset, length > 0, writable: boolean, windowSize?: 1..2^30): "
                         "fd, offset and length must be integers in range")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t offset = static_cast<uint64_t>(info[1].As<Napi::Number>().DoubleValue());
  uint64_t length = static_cast<uint64_t>(info[2].As<Napi::Number>().DoubleValue());
  bool writable = info[3].As<Napi::Boolean>().Value();
  uint64_t window = info[4].IsUndefined() ? static_cast<uint64_t>(kMaxWindow)
                                          : static_cast<uint64_t>(info[4].As<Napi::Number>().DoubleValue());

  struct stat st;
  if (fstat(fd, &st) != 0) return Fail(env, "mapShared: fstat failed", errno);
  // mmap wants a file offset that is a multiple of the page size, or of the
  // huge page size on hugetlbfs (which reports it as st_blksize).
  uint64_t align = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (S_ISREG(st.st_mode)) {
    if (offset + length > static_cast<uint64_t>(st.st_size)) {
      Napi::RangeError::New(env, "mapShared: the range [" + std::to_string(offset) + ", " +
                                     std::to_string(offset + length) + ") ends past the end of the file (" +
                                     std::to_string(st.st_size) + " bytes)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint64_t block = static_cast<uint64_t>(st.st_blksize);
    if (block > align && (block & (block - 1)) == 0) align = block;
  }
  uint64_t start = offset & ~(align - 1);
  uint64_t mapped = (offset - start + length + align - 1) & ~(align - 1);
  if (mapped > SIZE_MAX) return Fail(env, "mapShared: the region does not fit in the address space");

  auto* m = new Mapping;
  m->prot = PROT_READ | PROT_WRITE;
  m->mapped = static_cast<size_t>(mapped);
  void* p = mmap(nullptr, m->mapped, m->prot, writable ? MAP_SHARED : MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) {
    int err = errno;
    delete m;
    return Fail(env, "mapShared: mmap failed", err);
  }
  m->base = static_cast<uint8_t*>(p);
  m->refs = 1;  // held by this call until the unmap function takes it over

  uint8_t* data = m->base + (offset - start);
  Napi::Array windows = Napi::Array::New(env);
  for (uint64_t at = 0, i = 0; at < length; at += window, i++) {
    size_t size = static_cast<size_t>(length - at < window ? length - at : window);
    napi_value ab;
    if (napi_create_external_arraybuffer(env, data + at, size, ReleaseFromFinalizer, m, &ab) != napi_ok) {
      Release(m);  // windows made so far hold their own references
      return Fail(env, "mapShared: could not create an external ArrayBuffer");
    }
    m->refs++;
    windows.Set(static_cast<uint32_t>(i), Napi::Value(env, ab));
  }

  Napi::Function unmap = Napi::Function::New(env, Unmap, "unmap", m);
  // The function's reference is the one this call held.
  unmap.AddFinalizer([](Napi::Env, Mapping* mapping) { Release(mapping); }, m);
  Napi::Object result = Napi::Object::New(env);
  result.Set("windows", windows);
  result.Set("windowSize", Napi::Number::New(env, static_cast<double>(window)));
  result.Set("unmap", unmap);
  return result;
}

}  // namespace vblk
