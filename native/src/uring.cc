// io_uring through raw system calls and <linux/io_uring.h>, no liburing.
//
// JavaScript prepares operations with prep() (one SQE each; it returns
// false when the submission queue is full) and hands them to the kernel
// with submit(): one io_uring_enter per batch of operations, which also
// reaps whatever completed during it (page-cache hits complete inline)
// and delivers that before returning. An eventfd registered on the ring
// becomes readable when later completions are ready; a uv_poll on it
// reaps the completion queue and calls JavaScript once per batch (see
// completions.h). The JavaScript engine keeps every buffer
// referenced until its completion, caps operations in flight at the
// submission queue size (the completion queue is twice that, so it cannot
// overflow in normal operation), and retries short transfers and EAGAIN.
// Should the kernel still report a completion queue overflow, reaping
// asks it to flush the overflowed entries and reaps again.

#include "uring.h"

#ifdef __linux__
#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <string>

namespace vblk {
namespace {

int SysSetup(unsigned entries, io_uring_params* p) { return static_cast<int>(syscall(__NR_io_uring_setup, entries, p)); }

int SysEnter(int fd, unsigned toSubmit, unsigned minComplete, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, toSubmit, minComplete, flags, nullptr, 0));
}

int SysRegister(int fd, unsigned op, void* arg, unsigned n) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, n));
}

template <typename T>
T LoadAcquire(T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

template <typename T>
void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

// The opcodes vblk needs, checked with IORING_REGISTER_PROBE.
std::string CheckOpcodes(int fd) {
  const unsigned n = 64;
  size_t size = sizeof(io_uring_probe) + n * sizeof(io_uring_probe_op);
  auto* probe = static_cast<io_uring_probe*>(calloc(1, size));
  int r = SysRegister(fd, IORING_REGISTER_PROBE, probe, n);
  std::string missing;
  if (r < 0) {
    missing = std::string("IORING_REGISTER_PROBE failed: ") + strerror(errno);
  } else {
    const int ops[] = {IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FSYNC};
    const char* names[] = {"READ", "WRITE", "FSYNC"};
    for (int i = 0; i < 3; i++) {
      if (ops[i] > probe->last_op || !(probe->ops[ops[i]].flags & IO_URING_OP_SUPPORTED)) {
        missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + names[i] + " unsupported";
      }
    }
  }
  free(probe);
  return missing;
}

}  // namespace

struct Uring::Ring {
  int fd = -1;
  int eventfd = -1;
  unsigned entries = 0;
  unsigned* sqHead = nullptr;
  unsigned* sqTail = nullptr;
  unsigned* sqMask = nullptr;
  unsigned* sqFlags = nullptr;
  unsigned* sqArray = nullptr;
  unsigned* cqHead = nullptr;
  unsigned* cqTail = nullptr;
  unsigned* cqMask = nullptr;
  io_uring_sqe* sqes = nullptr;
  io_uring_cqe* cqes = nullptr;
  void* sqPtr = MAP_FAILED;
  void* cqPtr = MAP_FAILED;
  size_t sqSize = 0;
  size_t cqSize = 0;
  size_t sqesSize = 0;
  unsigned localTail = 0;
  unsigned toSubmit = 0;

  // Returns an empty string on success, else why the ring is unusable.
  std::string Open(unsigned want) {
    io_uring_params p;
    memset(&p, 0, sizeof p);
    // One thread submits (the event loop), so completions can wait as
    // deferred task work until that thread asks for them: the kernel
    // signals the eventfd when the first one is ready, and reaping runs
    // the work with io_uring_enter(GETEVENTS). Without these flags (kernels
    // before 6.1) completions interrupt the thread whenever they arrive.
    p.flags = IORING_SETUP_CLAMP | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    fd = SysSetup(want, &p);
    if (fd < 0 && errno == EINVAL) {
      memset(&p, 0, sizeof p);
      p.flags = IORING_SETUP_CLAMP;
      fd = SysSetup(want, &p);
    }
    if (fd < 0) return std::string("io_uring_setup failed: ") + strerror(errno);
    entries = p.sq_entries;
    sqSize = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cqSize = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sqSize = cqSize = sqSize > cqSize ? sqSize : cqSize;
    sqPtr = mmap(nullptr, sqSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sqPtr == MAP_FAILED) return std::string("mmap of the SQ ring failed: ") + strerror(errno);
    cqPtr = single ? sqPtr
                   : mmap(nullptr, cqSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cqPtr == MAP_FAILED) return std::string("mmap of the CQ ring failed: ") + strerror(errno);
    sqesSize = p.sq_entries * sizeof(io_uring_sqe);
    void* s = mmap(nullptr, sqesSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (s == MAP_FAILED) return std::string("mmap of the SQEs failed: ") + strerror(errno);
    sqes = static_cast<io_uring_sqe*>(s);
    char* sq = static_cast<char*>(sqPtr);
    char* cq = static_cast<char*>(cqPtr);
    sqHead = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sqTail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sqMask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sqFlags = reinterpret_cast<unsigned*>(sq + p.sq_off.flags);
    sqArray = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cqHead = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cqTail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cqMask = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    localTail = *sqTail;
    std::string missing = CheckOpcodes(fd);
    if (!missing.empty()) return missing;
    eventfd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (eventfd < 0) return std::string("eventfd failed: ") + strerror(errno);
    if (SysRegister(fd, IORING_REGISTER_EVENTFD, &eventfd, 1) < 0) {
      return std::string("IORING_REGISTER_EVENTFD failed: ") + strerror(errno);
    }
    return "";
  }

  void Close() {
    if (sqes) munmap(sqes, sqesSize);
    if (cqPtr != MAP_FAILED && cqPtr != sqPtr) munmap(cqPtr, cqSize);
    if (sqPtr != MAP_FAILED) munmap(sqPtr, sqSize);
    if (eventfd >= 0) close(eventfd);
    if (fd >= 0) close(fd);
    sqes = nullptr;
    sqPtr = cqPtr = MAP_FAILED;
    eventfd = fd = -1;
  }

  bool Full() const { return localTail - LoadAcquire(sqHead) >= entries; }

  io_uring_sqe* Next() {
    unsigned idx = localTail & *sqMask;
    io_uring_sqe* sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqArray[idx] = idx;
    localTail++;
    toSubmit++;
    return sqe;
  }

  // Publishes the prepared entries and enters the kernel once. Returns how
  // many the kernel took, or -errno.
  int Submit() {
    StoreRelease(sqTail, localTail);
    if (toSubmit == 0) return 0;
    for (;;) {
      int r = SysEnter(fd, toSubmit, 0, IORING_ENTER_GETEVENTS);
      if (r >= 0) {
        toSubmit -= static_cast<unsigned>(r);
        return r;
      }
      if (errno == EINTR) continue;
      // EAGAIN/EBUSY: the kernel is short of resources or completions are
      // backed up; the entries stay queued for the next submit.
      if (errno == EAGAIN || errno == EBUSY) return 0;
      return -errno;
    }
  }
};

Napi::Object Uring::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "Uring",
                                   {InstanceMethod<&Uring::Prep>("prep"), InstanceMethod<&Uring::Submit>("submit"),
                                    InstanceMethod<&Uring::Close>("close"), InstanceMethod<&Uring::TryRead>("tryRead"),
                                    InstanceMethod<&Uring::TryWrite>("tryWrite"),

                                    InstanceAccessor<&Uring::Entries>("entries"),
                                    StaticMethod<&Uring::Probe>("probe")});
  exports.Set("Uring", cls);
  return exports;
}

Napi::Value Uring::Probe(const Napi::CallbackInfo& info) {
  Ring ring;
  std::string why = ring.Open(4);
  ring.Close();
  if (why.empty()) return info.Env().Null();
  return Napi::String::New(info.Env(), why);
}

// new Uring(entries, completions: Int32Array, onComplete(count))
Uring::Uring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Uring>(info), ring_(new Ring) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsFunction()) {
    Napi::TypeError::New(env, "new Uring(entries, completions: Int32Array, onComplete)").ThrowAsJavaScriptException();
    return;
  }
  std::string why = ring_->Open(info[0].As<Napi::Number>().Uint32Value());
  if (!why.empty()) {
    ring_->Close();
    Napi::Error::New(env, why).ThrowAsJavaScriptException();
    return;
  }
  if (!sink_.Start(env, ring_->eventfd, info[1].As<Napi::Int32Array>(), info[2].As<Napi::Function>(), &Uring::Reap,
                   this, "vblk:uring")) {
    ring_->Close();
    Napi::Error::New(env, "uv_poll_init on the ring's eventfd failed").ThrowAsJavaScriptException();
  }
}

Uring::~Uring() {
  sink_.Stop();
  if (ring_) ring_->Close();
  delete ring_;
}

Napi::Value Uring::Entries(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ring_->entries);
}

// prep(op, fd, buffer | null, position, id, worker?) -> false when the queue
// is full. op: 0 read, 1 write, 2 fdatasync, 3 fsync. worker: hand the
// operation to an io-wq worker thread at once (IOSQE_ASYNC) instead of
// trying it inline in io_uring_enter, so a large page-cache copy runs on
// another core while the event loop goes on.
Napi::Value Uring::Prep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (ring_->fd < 0) {
    Napi::Error::New(env, "ring is closed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (ring_->Full()) return Napi::Boolean::New(env, false);
  uint32_t op = info[0].As<Napi::Number>().Uint32Value();
  int32_t fd = info[1].As<Napi::Number>().Int32Value();
  double position = info[3].As<Napi::Number>().DoubleValue();
  uint32_t id = info[4].As<Napi::Number>().Uint32Value();
  bool worker = info.Length() > 5 && info[5].ToBoolean().Value();
  io_uring_sqe* sqe = ring_->Next();
  sqe->fd = fd;
  sqe->user_data = id;
  if (worker) sqe->flags |= IOSQE_ASYNC;
  if (op <= 1) {
    Napi::Uint8Array buf = info[2].As<Napi::Uint8Array>();
    sqe->opcode = op == 0 ? IORING_OP_READ : IORING_OP_WRITE;
    sqe->addr = reinterpret_cast<uint64_t>(buf.Data());
    sqe->len = static_cast<uint32_t>(buf.ByteLength());
    sqe->off = static_cast<uint64_t>(position);
  } else {
    sqe->opcode = IORING_OP_FSYNC;
    sqe->fsync_flags = op == 2 ? IORING_FSYNC_DATASYNC : 0;
  }
  sink_.Track(+1);
  return Napi::Boolean::New(env, true);
}

// submit() -> how many entries the kernel took. Completions that were ready
// by the time io_uring_enter returned are delivered before submit returns.
Napi::Value Uring::Submit(const Napi::CallbackInfo& info) {
  int r = ring_->fd < 0 ? 0 : ring_->Submit();
  if (r < 0) {
    Napi::Error::New(info.Env(), std::string("io_uring_enter failed: ") + strerror(-r)).ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  if (r > 0) {
    ReapQueue(this);
    sink_.Deliver();
  }
  return Napi::Number::New(info.Env(), r);
}

Napi::Value Uring::Close(const Napi::CallbackInfo& info) {
  sink_.Stop();
  ring_->Close();
  return info.Env().Undefined();
}

// poll() -> reaps whatever completed, delivering it before returning.
// tryRead(fd, buffer, position) -> bytes read, or -errno (-EAGAIN when the
// data is not all in the page cache). preadv2 with RWF_NOWAIT never
// blocks: a page-cache hit is served at the cost of one system call,
// without a trip through the ring and the event loop.
Napi::Value Uring::TryRead(const Napi::CallbackInfo& info) {
  int32_t fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  struct iovec iov = {buf.Data(), buf.ByteLength()};
  ssize_t r = preadv2(fd, &iov, 1, static_cast<off_t>(info[2].As<Napi::Number>().DoubleValue()), RWF_NOWAIT);
  return Napi::Number::New(info.Env(), r >= 0 ? static_cast<double>(r) : -errno);
}

// tryWrite(fd, buffer, position, nowait) -> bytes written, or -errno.
// For descriptors that write into the page cache: with nowait, pwritev2
// RWF_NOWAIT (-EAGAIN when it would block, -EOPNOTSUPP where the file
// system has no non-blocking buffered writes, like ext4); without, a plain
// pwrite, which waits only when the kernel throttles dirty pages.
Napi::Value Uring::TryWrite(const Napi::CallbackInfo& info) {
  int32_t fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  struct iovec iov = {buf.Data(), buf.ByteLength()};
  int flags = info[3].As<Napi::Boolean>().Value() ? RWF_NOWAIT : 0;
  ssize_t r = pwritev2(fd, &iov, 1, static_cast<off_t>(info[2].As<Napi::Number>().DoubleValue()), flags);
  return Napi::Number::New(info.Env(), r >= 0 ? static_cast<double>(r) : -errno);
}

void Uring::Reap(void* self) {
  auto* u = static_cast<Uring*>(self);
  uint64_t ignored;
  while (read(u->ring_->eventfd, &ignored, sizeof ignored) > 0) {
  }
  // Runs deferred completion work, posting its CQEs, without waiting.
  SysEnter(u->ring_->fd, 0, 0, IORING_ENTER_GETEVENTS);
  ReapQueue(u);
  // Entries left queued by an EAGAIN/EBUSY submit go in now that space freed up.
  if (u->ring_->toSubmit > 0) u->ring_->Submit();
}

void Uring::ReapQueue(Uring* u) {
  Ring* ring = u->ring_;
  for (;;) {
    unsigned head = *ring->cqHead;
    unsigned tail = LoadAcquire(ring->cqTail);
    while (head != tail) {
      io_uring_cqe* cqe = &ring->cqes[head & *ring->cqMask];
      u->sink_.Push(cqe->user_data, cqe->res);
      head++;
      StoreRelease(ring->cqHead, head);
    }
    if (!(LoadAcquire(ring->sqFlags) & IORING_SQ_CQ_OVERFLOW)) break;
    // Completions the kernel could not post: ask for them, then reap again.
    SysEnter(ring->fd, 0, 0, IORING_ENTER_GETEVENTS);
  }
}

}  // namespace vblk

#else  // !__linux__

namespace vblk {

Napi::Object Uring::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "Uring", {StaticMethod<&Uring::Probe>("probe")});
  exports.Set("Uring", cls);
  return exports;
}

Napi::Value Uring::Probe(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), "io_uring exists only on Linux");
}

Uring::Uring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Uring>(info) {
  Napi::Error::New(info.Env(), "io_uring exists only on Linux").ThrowAsJavaScriptException();
}

Uring::~Uring() {}
Napi::Value Uring::Entries(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Uring::Prep(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Uring::Submit(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Uring::Close(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Uring::TryRead(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Uring::TryWrite(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
void Uring::Reap(void*) {}
void Uring::ReapQueue(Uring*) {}

}  // namespace vblk

#endif
