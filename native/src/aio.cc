// POSIX AIO: reads and writes go to the kernel (or libc) in batches with
// lio_listio(LIO_NOWAIT); syncs with aio_fsync. Results come back through
// aio_error/aio_return. How vblk learns that something completed depends
// on the system:
//
// - FreeBSD (and macOS where <signal.h> defines SIGEV_KEVENT): every
//   aiocb carries SIGEV_KEVENT for one kqueue, and uv_poll watches that
//   kqueue; each EVFILT_AIO event names the operation that finished.
// - Linux: glibc implements POSIX AIO in user space, with helper threads
//   that work through each file descriptor's requests in order, and its
//   only notifications are signals or a new thread per notification
//   (SIGEV_THREAD). vblk asks for one SIGEV_THREAD notification per
//   lio_listio batch (not per operation), whose thread writes an eventfd;
//   uv_poll on the eventfd then scans the operations in flight with
//   aio_error. Signals (SIGEV_SIGNAL + signalfd) are not used: Node's
//   threads do not block them, so a real-time signal could kill the
//   process.
//
// What it costs on Linux (bench/engines, 2 cores, ext4, Node 20): a 4 KiB
// read from the page cache at depth 1 takes 75-185 µs (threads 27-47,
// uring 2.3), because every batch wakes a glibc helper thread and then a
// new notification thread; at depth 32 it does 100-200k reads/s in the
// page cache against uring's 430k, and 10-17k with O_DIRECT against
// uring's 52k, since glibc serves one descriptor's requests one at a
// time. That is why `auto` never picks it on Linux.

#include "aio.h"

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <vector>

#if defined(__linux__)
#include <sys/eventfd.h>
#define VBLK_AIO_EVENTFD 1
#elif defined(SIGEV_KEVENT)
#include <sys/event.h>
#define VBLK_AIO_KQUEUE 1
#endif

namespace vblk {

#if defined(VBLK_AIO_EVENTFD) || defined(VBLK_AIO_KQUEUE)

struct Aio::Slot {
  struct aiocb cb;
  uint32_t id = 0;
  bool active = false;
};

#ifdef VBLK_AIO_EVENTFD
static void NotifyEventfd(union sigval value) {
  uint64_t one = 1;
  ssize_t r = write(value.sival_int, &one, sizeof one);
  (void)r;
}
#endif

Napi::Object Aio::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "Aio",
                                   {InstanceMethod<&Aio::Prep>("prep"), InstanceMethod<&Aio::Submit>("submit"),
                                    InstanceMethod<&Aio::Close>("close"), StaticMethod<&Aio::Probe>("probe")});
  exports.Set("Aio", cls);
  return exports;
}

Napi::Value Aio::Probe(const Napi::CallbackInfo& info) {
#ifdef VBLK_AIO_EVENTFD
  return info.Env().Null();
#else
  int kq = kqueue();
  if (kq < 0) return Napi::String::New(info.Env(), std::string("kqueue failed: ") + strerror(errno));
  close(kq);
  return info.Env().Null();
#endif
}

// new Aio(slots, completions: Int32Array, onComplete(count))
Aio::Aio(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Aio>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsFunction()) {
    Napi::TypeError::New(env, "new Aio(slots, completions: Int32Array, onComplete)").ThrowAsJavaScriptException();
    return;
  }
  slots_.resize(info[0].As<Napi::Number>().Uint32Value());
#ifdef VBLK_AIO_EVENTFD
  fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
#else
  fd_ = kqueue();
#endif
  if (fd_ < 0) {
    Napi::Error::New(env, std::string("cannot create the completion descriptor: ") + strerror(errno))
        .ThrowAsJavaScriptException();
    return;
  }
  if (!sink_.Start(env, fd_, info[1].As<Napi::Int32Array>(), info[2].As<Napi::Function>(), &Aio::Reap, this,
                   "vblk:aio")) {
    Napi::Error::New(env, "uv_poll_init failed").ThrowAsJavaScriptException();
  }
}

Aio::~Aio() {
  sink_.Stop();
  if (fd_ >= 0) close(fd_);
}

// How one operation says it finished: a kevent naming it, or (Linux) nothing
// of its own, since its batch notifies.
void Aio::OperationNotice(struct sigevent* sev, Slot* slot) {
  memset(sev, 0, sizeof *sev);
#ifdef VBLK_AIO_EVENTFD
  (void)slot;
  sev->sigev_notify = SIGEV_NONE;
#else
  sev->sigev_notify = SIGEV_KEVENT;
  sev->sigev_notify_kqueue = fd_;
  sev->sigev_value.sival_ptr = slot;
#endif
}

// How a batch says it finished: (Linux) one thread that writes the
// eventfd, or nothing where every operation has its own kevent.
void Aio::BatchNotice(struct sigevent* sev) {
  memset(sev, 0, sizeof *sev);
#ifdef VBLK_AIO_EVENTFD
  sev->sigev_notify = SIGEV_THREAD;
  sev->sigev_notify_function = NotifyEventfd;
  sev->sigev_value.sival_int = fd_;
#else
  sev->sigev_notify = SIGEV_NONE;
#endif
}

// prep(op, fd, buffer | null, position, id): op 0 read, 1 write, 2 fdatasync, 3 fsync.
// `id` is also the index of the operation's aiocb: JavaScript hands out
// free ids below the slot count it asked for.
Napi::Value Aio::Prep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t op = info[0].As<Napi::Number>().Uint32Value();
  uint32_t index = info[4].As<Napi::Number>().Uint32Value();
  if (index >= slots_.size() || slots_[index].active) {
    Napi::RangeError::New(env, "aio slot out of range or busy").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Slot& s = slots_[index];
  memset(&s.cb, 0, sizeof s.cb);
  s.cb.aio_fildes = info[1].As<Napi::Number>().Int32Value();
  s.id = index;
  s.active = true;
  OperationNotice(&s.cb.aio_sigevent, &s);
  sink_.Track(+1);
  if (op <= 1) {
    Napi::Uint8Array buf = info[2].As<Napi::Uint8Array>();
    s.cb.aio_buf = buf.Data();
    s.cb.aio_nbytes = buf.ByteLength();
    s.cb.aio_offset = static_cast<off_t>(info[3].As<Napi::Number>().DoubleValue());
    s.cb.aio_lio_opcode = op == 0 ? LIO_READ : LIO_WRITE;
    batch_.push_back(&s.cb);
    return Napi::Boolean::New(env, true);
  }
  // Syncs cannot go through lio_listio; they start at once, and on Linux
  // each is a batch of its own for notification.
#ifdef VBLK_AIO_EVENTFD
  BatchNotice(&s.cb.aio_sigevent);
#endif
#ifdef O_DSYNC
  int mode = op == 2 ? O_DSYNC : O_SYNC;
#else
  int mode = O_SYNC;
#endif
  if (aio_fsync(mode, &s.cb) != 0) {
    Finish(s, -errno);
#ifdef VBLK_AIO_EVENTFD
    uint64_t one = 1;
    ssize_t w = write(fd_, &one, sizeof one);
    (void)w;
#endif
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value Aio::Submit(const Napi::CallbackInfo& info) {
  if (batch_.empty()) return Napi::Number::New(info.Env(), 0);
  struct sigevent sev;
  BatchNotice(&sev);
  size_t n = batch_.size();
  int r = lio_listio(LIO_NOWAIT, batch_.data(), static_cast<int>(n), &sev);
  batch_.clear();
  if (r != 0) {
    // Some or all did not start (EAGAIN, EIO): each aiocb tells which, and
    // no notification may come, so look now; the results reach JavaScript
    // from the poll callback, never from inside this call.
    Scan();
#ifdef VBLK_AIO_EVENTFD
    uint64_t one = 1;
    ssize_t w = write(fd_, &one, sizeof one);
    (void)w;
#else
    sink_.Flush();
#endif
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Aio::Close(const Napi::CallbackInfo& info) {
  sink_.Stop();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  return info.Env().Undefined();
}

void Aio::Finish(Slot& s, int32_t result) {
  s.active = false;
  sink_.Push(s.id, result);
}

// Collects every finished operation (kqueue events name them; on Linux,
// or after a failed submit, every slot in flight is asked).
void Aio::Scan() {
  for (Slot& s : slots_) {
    if (!s.active) continue;
    int e = aio_error(&s.cb);
    if (e == EINPROGRESS) continue;
    ssize_t r = aio_return(&s.cb);
    Finish(s, e != 0 ? -e : static_cast<int32_t>(r));
  }
}

void Aio::Reap(void* self) {
  auto* a = static_cast<Aio*>(self);
#ifdef VBLK_AIO_EVENTFD
  uint64_t ignored;
  while (read(a->fd_, &ignored, sizeof ignored) > 0) {
  }
  a->Scan();
#else
  struct kevent events[64];
  struct timespec zero = {0, 0};
  for (;;) {
    int n = kevent(a->fd_, nullptr, 0, events, 64, &zero);
    if (n <= 0) break;
    for (int i = 0; i < n; i++) {
      if (events[i].filter != EVFILT_AIO) continue;
      Slot* s = static_cast<Slot*>(events[i].udata);
      if (!s->active) continue;
      int e = aio_error(&s->cb);
      ssize_t r = aio_return(&s->cb);
      a->Finish(*s, e != 0 ? -e : static_cast<int32_t>(r));
    }
  }
#endif
}

#else  // no completion mechanism

Napi::Object Aio::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "Aio", {StaticMethod<&Aio::Probe>("probe")});
  exports.Set("Aio", cls);
  return exports;
}

Napi::Value Aio::Probe(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), "no POSIX AIO completion mechanism on this system (no eventfd, no SIGEV_KEVENT)");
}

Aio::Aio(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Aio>(info) {
  Napi::Error::New(info.Env(), "POSIX AIO is not supported here").ThrowAsJavaScriptException();
}

Aio::~Aio() {}
Napi::Value Aio::Prep(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Aio::Submit(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
Napi::Value Aio::Close(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }
void Aio::OperationNotice(struct sigevent*, Slot*) {}
void Aio::BatchNotice(struct sigevent*) {}
void Aio::Finish(Slot&, int32_t) {}
void Aio::Scan() {}
void Aio::Reap(void*) {}

#endif

}  // namespace vblk
