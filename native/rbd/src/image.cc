// Image: one open RBD image. Reads, writes, discards, zeroing and flushes
// are librbd aio calls made on the event loop; they never wait. librbd
// announces finished requests on an eventfd (rbd_set_image_notification),
// which JavaScript watches with the main addon's watchFd, and drain()
// hands them over in a batch (rbd_poll_io_events) as (id, result) pairs,
// so completions arrive the way the io_uring engine's do, with no thread
// of ours and no call from librbd's threads into JavaScript. Buffers stay
// referenced on the JavaScript side until their request completes;
// scatter lists are kept here, since librbd reads them until the end.
// Everything else (block status by rbd_diff_iterate2, snapshots, the
// exclusive lock, close) waits on the cluster, so it runs on the thread
// pool (blocking-call.h).

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "blocking-call.h"
#include "rbd-addon.h"

namespace vblk_rbd {
namespace {

/** One request in flight: its id and, for a scatter list, the iovecs librbd reads until it completes. */
struct Op {
  double id;
  std::vector<iovec> iov;
};

struct Extent {
  uint64_t offset;
  uint64_t length;
  bool exists;
};

struct Snapshot {
  uint64_t id;
  uint64_t size;
  std::string name;
  bool isProtected;
};

struct Linked {
  std::string pool, ns, image;
};

class Image : public Napi::ObjectWrap<Image> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Image",
        {InstanceAccessor<&Image::EventFd>("eventFd"), InstanceMethod<&Image::Size>("size"),
         InstanceMethod<&Image::Info>("info"), InstanceMethod<&Image::Read>("read"),
         InstanceMethod<&Image::Write>("write"), InstanceMethod<&Image::Discard>("discard"),
         InstanceMethod<&Image::WriteZeroes>("writeZeroes"), InstanceMethod<&Image::Flush>("flush"),
         InstanceMethod<&Image::Drain>("drain"), InstanceMethod<&Image::Diff>("diff"),
         InstanceMethod<&Image::Snapshots>("snapshots"), InstanceMethod<&Image::SnapCreate>("snapCreate"),
         InstanceMethod<&Image::SnapRemove>("snapRemove"), InstanceMethod<&Image::SnapRollback>("snapRollback"),
         InstanceMethod<&Image::SnapProtect>("snapProtect"), InstanceMethod<&Image::SnapUnprotect>("snapUnprotect"),
         InstanceMethod<&Image::LockAcquire>("lockAcquire"),
         InstanceMethod<&Image::LockOwners>("lockOwners"), InstanceMethod<&Image::Watchers>("watchers"), InstanceMethod<&Image::Resize>("resize"),
         InstanceMethod<&Image::Close>("close")});
  }

  explicit Image(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Image>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsExternal() || !info[1].IsObject()) {
      Napi::TypeError::New(env, "use Cluster.open()").ThrowAsJavaScriptException();
      return;
    }
    OpenedImage* o = info[0].As<Napi::External<OpenedImage>>().Data();
    io_ = o->io;
    image_ = o->image;
    efd_ = o->eventFd;
    cluster_ = Napi::Persistent(info[1].As<Napi::Object>());
  }

  ~Image() {
    // Only when JavaScript dropped an image it never closed: rbd_close may wait.
    if (image_) rbd_close(image_);
    if (io_) rados_ioctx_destroy(io_);
    if (efd_ >= 0) close(efd_);
  }

 private:
  bool Open(Napi::Env env) {
    if (image_) return true;
    Napi::Error::New(env, "the image is closed").ThrowAsJavaScriptException();
    return false;
  }

  Napi::Value EventFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), efd_); }

  Napi::Value Size(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    uint64_t size = 0;
    int rc = rbd_get_size(image_, &size);
    if (rc < 0) {
      BlockingCall::ErrnoError(env, "reading the image size", rc).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(size));
  }

  // info(): Promise<{ size, objectSize, features, flags, parent: { pool, namespace, image, snapshot } | null }>
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    struct Out {
      rbd_image_info_t stat;
      uint64_t features = 0, flags = 0;
      bool hasParent = false;
      Linked parent;
      std::string parentSnap;
    };
    auto out = std::make_shared<Out>();
    rbd_image_t image = image_;
    return BlockingCall::Run(
        env, "reading the image's information", {Value()},
        [=](std::string&) {
          int rc = rbd_stat(image, &out->stat, sizeof out->stat);
          if (rc >= 0) rc = rbd_get_features(image, &out->features);
          if (rc >= 0) rc = rbd_get_flags(image, &out->flags);
          if (rc < 0) return rc;
          rbd_linked_image_spec_t parent;
          rbd_snap_spec_t snap;
          rc = rbd_get_parent(image, &parent, &snap);
          if (rc == -ENOENT) return 0;
          if (rc < 0) return rc;
          out->hasParent = true;
          out->parent = {parent.pool_name, parent.pool_namespace, parent.image_name};
          out->parentSnap = snap.name;
          rbd_linked_image_spec_cleanup(&parent);
          rbd_snap_spec_cleanup(&snap);
          return 0;
        },
        [=](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("size", static_cast<double>(out->stat.size));
          o.Set("objectSize", static_cast<double>(out->stat.obj_size));
          o.Set("features", static_cast<double>(out->features));
          o.Set("flags", static_cast<double>(out->flags));
          if (out->hasParent) {
            Napi::Object p = Napi::Object::New(env);
            p.Set("pool", out->parent.pool);
            p.Set("namespace", out->parent.ns);
            p.Set("image", out->parent.image);
            p.Set("snapshot", out->parentSnap);
            o.Set("parent", p);
          } else {
            o.Set("parent", env.Null());
          }
          return o;
        });
  }

  /** A completion whose argument is a new Op for `id`; the Op is owned by the completion until drain(). */
  static rbd_completion_t Completion(double id, Op** op) {
    *op = new Op{id, {}};
    rbd_completion_t c = nullptr;
    rbd_aio_create_completion(*op, nullptr, &c);
    return c;
  }

  Napi::Value Submitted(Napi::Env env, int rc, rbd_completion_t c, Op* op) {
    if (rc < 0) {
      rbd_aio_release(c);
      delete op;
    } else {
      inflight_++;
    }
    return Napi::Number::New(env, rc < 0 ? rc : 0);
  }

  /** The buffers of argument `arg` (one Uint8Array or an array of them) as iovecs. */
  static bool Iovecs(const Napi::Value& arg, std::vector<iovec>& iov) {
    auto add = [&](const Napi::Value& v) {
      if (!v.IsTypedArray()) return false;
      Napi::Uint8Array b = v.As<Napi::Uint8Array>();
      iov.push_back({b.Data(), b.ByteLength()});
      return true;
    };
    if (!arg.IsArray()) return add(arg);
    Napi::Array list = arg.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++)
      if (!add(list.Get(i))) return false;
    return true;
  }

  // read(id, buffer | buffers, offset): 0 or -errno (EINVAL for arguments that are not buffers)
  Napi::Value Read(const Napi::CallbackInfo& info) { return Transfer(info, false); }
  // write(id, buffer | buffers, offset): 0 or -errno
  Napi::Value Write(const Napi::CallbackInfo& info) { return Transfer(info, true); }

  Napi::Value Transfer(const Napi::CallbackInfo& info, bool write) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    Op* op;
    rbd_completion_t c = Completion(info[0].As<Napi::Number>().DoubleValue(), &op);
    uint64_t offset = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
    int rc;
    if (!Iovecs(info[1], op->iov)) {
      rc = -EINVAL;
    } else if (op->iov.size() == 1) {
      char* data = static_cast<char*>(op->iov[0].iov_base);
      size_t length = op->iov[0].iov_len;
      rc = write ? rbd_aio_write(image_, offset, length, data, c) : rbd_aio_read(image_, offset, length, data, c);
    } else {
      int n = static_cast<int>(op->iov.size());
      rc = write ? rbd_aio_writev(image_, op->iov.data(), n, offset, c)
                 : rbd_aio_readv(image_, op->iov.data(), n, offset, c);
    }
    return Submitted(env, rc, c, op);
  }

  // discard(id, offset, length): 0 or -errno
  Napi::Value Discard(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    Op* op;
    rbd_completion_t c = Completion(info[0].As<Napi::Number>().DoubleValue(), &op);
    int rc = rbd_aio_discard(image_, static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()),
                             static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value()), c);
    return Submitted(env, rc, c, op);
  }

  // writeZeroes(id, offset, length, allocate): 0 or -errno; allocate keeps the range provisioned
  Napi::Value WriteZeroes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    Op* op;
    rbd_completion_t c = Completion(info[0].As<Napi::Number>().DoubleValue(), &op);
    int flags = info[3].ToBoolean() ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION : 0;
    int rc = rbd_aio_write_zeroes(image_, static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()),
                                  static_cast<size_t>(info[2].As<Napi::Number>().Int64Value()), c, flags, 0);
    return Submitted(env, rc, c, op);
  }

  // flush(id): 0 or -errno
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    Op* op;
    rbd_completion_t c = Completion(info[0].As<Napi::Number>().DoubleValue(), &op);
    return Submitted(env, rbd_aio_flush(image_, c), c, op);
  }

  // drain(out: Float64Array): how many (id, result) pairs it wrote; call again while it fills `out`.
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float64Array out = info[0].As<Napi::Float64Array>();
    if (!image_) return Napi::Number::New(env, 0);
    // Reset the eventfd before looking: a completion after the look writes it again. (EAGAIN: not signalled.)
    uint64_t count;
    ssize_t ignored = read(efd_, &count, sizeof count);
    (void)ignored;
    int room = static_cast<int>(out.ElementLength() / 2);
    int n = 0;
    rbd_completion_t batch[64];
    while (n < room) {
      int want = std::min(room - n, 64);
      int got = rbd_poll_io_events(image_, batch, want);
      if (got <= 0) break;
      for (int i = 0; i < got; i++) {
        Op* op = static_cast<Op*>(rbd_aio_get_arg(batch[i]));
        out[2 * n] = op->id;
        out[2 * n + 1] = static_cast<double>(rbd_aio_get_return_value(batch[i]));
        rbd_aio_release(batch[i]);
        delete op;
        inflight_--;
        n++;
      }
      if (got < want) break;
    }
    return Napi::Number::New(env, n);
  }

  // diff(offset, length, wholeObject, maxExtents): Promise<Float64Array of (offset, length, exists) triples>,
  // the allocated extents of the range, the parent's included
  Napi::Value Diff(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    uint64_t offset = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    uint64_t length = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    uint8_t whole = info[2].ToBoolean() ? 1 : 0;
    size_t max = static_cast<size_t>(info[3].As<Napi::Number>().Int64Value());
    struct Found {
      std::vector<Extent> extents;
      size_t max;
    };
    auto found = std::make_shared<Found>(Found{{}, max});
    rbd_image_t image = image_;
    return BlockingCall::Run(
        env, "reading the allocation map", {Value()},
        [=](std::string&) {
          auto each = [](uint64_t off, size_t len, int exists, void* arg) -> int {
            auto* f = static_cast<Found*>(arg);
            f->extents.push_back({off, len, exists != 0});
            return f->extents.size() >= f->max ? -ECANCELED : 0;
          };
          int rc = rbd_diff_iterate2(image, nullptr, offset, length, 1, whole, each, found.get());
          return rc == -ECANCELED ? 0 : rc;
        },
        [=](Napi::Env env) -> Napi::Value {
          Napi::Float64Array out = Napi::Float64Array::New(env, found->extents.size() * 3);
          for (size_t i = 0; i < found->extents.size(); i++) {
            out[3 * i] = static_cast<double>(found->extents[i].offset);
            out[3 * i + 1] = static_cast<double>(found->extents[i].length);
            out[3 * i + 2] = found->extents[i].exists ? 1 : 0;
          }
          return out;
        });
  }

  // snapshots(): Promise<{ id, name, size, protected }[]>
  Napi::Value Snapshots(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    auto list = std::make_shared<std::vector<Snapshot>>();
    rbd_image_t image = image_;
    return BlockingCall::Run(
        env, "listing snapshots", {Value()},
        [=](std::string&) {
          std::vector<rbd_snap_info_t> snaps(16);
          int max = static_cast<int>(snaps.size());
          int rc;
          while ((rc = rbd_snap_list(image, snaps.data(), &max)) == -ERANGE) snaps.resize(max);
          if (rc < 0) return rc;
          for (int i = 0; i < rc; i++) {
            int isProtected = 0;
            rbd_snap_is_protected(image, snaps[i].name, &isProtected);
            list->push_back({snaps[i].id, snaps[i].size, snaps[i].name, isProtected != 0});
          }
          rbd_snap_list_end(snaps.data());
          return 0;
        },
        [=](Napi::Env env) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, list->size());
          for (uint32_t i = 0; i < list->size(); i++) {
            Napi::Object s = Napi::Object::New(env);
            s.Set("id", static_cast<double>((*list)[i].id));
            s.Set("name", (*list)[i].name);
            s.Set("size", static_cast<double>((*list)[i].size));
            s.Set("protected", (*list)[i].isProtected);
            out.Set(i, s);
          }
          return out;
        });
  }

  /** A snapshot call by name, on the thread pool. */
  Napi::Value SnapCall(const Napi::CallbackInfo& info, const char* verb, int (*call)(rbd_image_t, const char*)) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    std::string name = StringArg(info[0]);
    rbd_image_t image = image_;
    return BlockingCall::Run(env, std::string(verb) + " snapshot " + name, {Value()},
                             [=](std::string&) { return call(image, name.c_str()); });
  }

  Napi::Value SnapCreate(const Napi::CallbackInfo& info) { return SnapCall(info, "creating", rbd_snap_create); }
  Napi::Value SnapRemove(const Napi::CallbackInfo& info) { return SnapCall(info, "removing", rbd_snap_remove); }
  Napi::Value SnapRollback(const Napi::CallbackInfo& info) { return SnapCall(info, "reverting to", rbd_snap_rollback); }
  Napi::Value SnapProtect(const Napi::CallbackInfo& info) { return SnapCall(info, "protecting", rbd_snap_protect); }
  Napi::Value SnapUnprotect(const Napi::CallbackInfo& info) {
    return SnapCall(info, "unprotecting", rbd_snap_unprotect);
  }

  // resize(size, allowShrink): Promise<void>
  Napi::Value Resize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    uint64_t size = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    bool shrink = info[1].ToBoolean();
    rbd_image_t image = image_;
    return BlockingCall::Run(env, "resizing the image", {Value()}, [=](std::string&) {
      auto quiet = [](uint64_t, uint64_t, void*) { return 0; };
      return rbd_resize2(image, size, shrink, quiet, nullptr);
    });
  }

  // lockAcquire(): Promise<void>; holds the exclusive lock and hands it to nobody until close
  Napi::Value LockAcquire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    rbd_image_t image = image_;
    return BlockingCall::Run(env, "taking the exclusive lock", {Value()},
                             [=](std::string&) { return rbd_lock_acquire(image, RBD_LOCK_MODE_EXCLUSIVE); });
  }

  // lockOwners(): Promise<string[]>, the clients holding the image's lock
  Napi::Value LockOwners(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    auto owners = std::make_shared<std::vector<std::string>>();
    rbd_image_t image = image_;
    return BlockingCall::Run(
        env, "asking who holds the lock", {Value()},
        [=](std::string&) {
          rbd_lock_mode_t mode;
          std::vector<char*> names(8);
          size_t max = names.size();
          int rc;
          while ((rc = rbd_lock_get_owners(image, &mode, names.data(), &max)) == -ERANGE) names.resize(max);
          if (rc == -ENOENT) return 0;
          if (rc < 0) return rc;
          for (size_t i = 0; i < max; i++) owners->emplace_back(names[i]);
          rbd_lock_get_owners_cleanup(names.data(), max);
          return 0;
        },
        [=](Napi::Env env) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, owners->size());
          for (uint32_t i = 0; i < owners->size(); i++) out.Set(i, (*owners)[i]);
          return out;
        });
  }

  // watchers(): Promise<{ address, client }[]>, the clients with the image open (a lock owner not among them is gone)
  Napi::Value Watchers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    auto list = std::make_shared<std::vector<std::pair<std::string, int64_t>>>();
    rbd_image_t image = image_;
    return BlockingCall::Run(
        env, "listing the image's watchers", {Value()},
        [=](std::string&) {
          std::vector<rbd_image_watcher_t> watchers(8);
          size_t max = watchers.size();
          int rc;
          while ((rc = rbd_watchers_list(image, watchers.data(), &max)) == -ERANGE) watchers.resize(max);
          if (rc < 0) return rc;
          for (size_t i = 0; i < max; i++) list->emplace_back(watchers[i].addr, watchers[i].id);
          rbd_watchers_list_cleanup(watchers.data(), max);
          return 0;
        },
        [=](Napi::Env env) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, list->size());
          for (uint32_t i = 0; i < list->size(); i++) {
            Napi::Object o = Napi::Object::New(env);
            o.Set("address", (*list)[i].first);
            o.Set("client", "client." + std::to_string((*list)[i].second));
            out.Set(i, o);
          }
          return out;
        });
  }

  // close(): Promise<void>; no request may be in flight
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (inflight_ > 0) {
      Napi::Error::New(env, "closing an image with requests in flight").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    rbd_image_t image = image_;
    rados_ioctx_t io = io_;
    int efd = efd_;
    image_ = nullptr;
    io_ = nullptr;
    efd_ = -1;
    return BlockingCall::Run(env, "closing the image", {Value()}, [=](std::string&) {
      int rc = rbd_close(image);
      rados_ioctx_destroy(io);
      close(efd);
      return rc;
    });
  }

  rados_ioctx_t io_ = nullptr;
  rbd_image_t image_ = nullptr;
  int efd_ = -1;
  size_t inflight_ = 0;
  Napi::ObjectReference cluster_;
};

}  // namespace

Napi::Function DefineImage(Napi::Env env) { return Image::Define(env); }

}  // namespace vblk_rbd
