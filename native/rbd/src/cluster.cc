// Cluster: one librados connection (rados_t) and what is done on a pool
// rather than an image: open, create and clone images.
// Cluster.connect(id, confFile, settings) reads the configuration the way
// the ceph CLI does (the file given, else $CEPH_CONF and the default
// places; then $CEPH_ARGS), applies the settings (keyring, timeouts,
// options from an rbd: name) and connects. Everything that talks to the
// cluster runs on the thread pool (blocking-call.h).

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <utility>
#include <vector>

#include "blocking-call.h"
#include "rbd-addon.h"

namespace vblk_rbd {

int OpenIoctx(rados_t cluster, const std::string& pool, const std::string& ns, rados_ioctx_t* io) {
  int rc = rados_ioctx_create(cluster, pool.c_str(), io);
  if (rc < 0) return rc;
  rados_ioctx_set_namespace(*io, ns.c_str());
  return 0;
}

namespace {

/** An I/O context for the length of one call. */
struct Ioctx {
  rados_ioctx_t io = nullptr;
  ~Ioctx() {
    if (io) rados_ioctx_destroy(io);
  }
};

class Cluster : public Napi::ObjectWrap<Cluster> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Cluster",
                       {StaticMethod<&Cluster::Connect>("connect"), InstanceMethod<&Cluster::Open>("open"),
                        InstanceMethod<&Cluster::Create>("create"), InstanceMethod<&Cluster::Clone>("clone"),
                        InstanceMethod<&Cluster::Shutdown>("shutdown")});
  }

  explicit Cluster(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Cluster>(info) {
    if (!info[0].IsExternal()) {
      Napi::TypeError::New(info.Env(), "use Cluster.connect()").ThrowAsJavaScriptException();
      return;
    }
    cluster_ = *info[0].As<Napi::External<rados_t>>().Data();
  }

  ~Cluster() {
    if (cluster_) rados_shutdown(cluster_);
  }

 private:
  // connect(id: string | null, confFile: string | null, settings: [string, string][]): Promise<Cluster>
  static Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string id = StringArg(info[0]);
    std::string conf = StringArg(info[1]);
    std::vector<std::pair<std::string, std::string>> settings;
    if (info[2].IsArray()) {
      Napi::Array list = info[2].As<Napi::Array>();
      for (uint32_t i = 0; i < list.Length(); i++) {
        Napi::Array kv = list.Get(i).As<Napi::Array>();
        settings.emplace_back(StringArg(kv.Get(0u)), StringArg(kv.Get(1u)));
      }
    }
    auto handle = std::make_shared<rados_t>(nullptr);
    return BlockingCall::Run(
        env, "connecting to the Ceph cluster", {},
        [=](std::string& what) {
          int rc = rados_create(handle.get(), id.empty() ? nullptr : id.c_str());
          if (rc < 0) return rc;
          rados_t c = *handle;
          if (!conf.empty()) {
            rc = rados_conf_read_file(c, conf.c_str());
            if (rc < 0) what = "reading " + conf;
          } else {
            rados_conf_read_file(c, nullptr);  // like the ceph CLI: no file is not an error
          }
          if (rc >= 0) rc = rados_conf_parse_env(c, nullptr);
          for (const auto& [key, value] : settings) {
            if (rc < 0) break;
            rc = rados_conf_set(c, key.c_str(), value.c_str());
            if (rc < 0) what = "setting " + key + "=" + value;
          }
          if (rc >= 0) rc = rados_connect(c);
          if (rc < 0) {
            rados_shutdown(c);
            *handle = nullptr;
          }
          return rc;
        },
        [=](Napi::Env env) -> Napi::Value {
          rados_t c = *handle;
          return Data(env)->cluster.New({Napi::External<rados_t>::New(env, &c)});
        });
  }

  bool Connected(Napi::Env env) {
    if (cluster_) return true;
    Napi::Error::New(env, "the cluster connection is shut down").ThrowAsJavaScriptException();
    return false;
  }

  // open(pool, namespace, image, snapshot | null, readOnly): Promise<Image>
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Connected(env)) return env.Undefined();
    std::string pool = StringArg(info[0]), ns = StringArg(info[1]), name = StringArg(info[2]);
    std::string snap = StringArg(info[3]);
    bool readOnly = info[4].ToBoolean() || !snap.empty();
    rados_t c = cluster_;
    auto opened = std::make_shared<OpenedImage>(OpenedImage{nullptr, nullptr, -1});
    return BlockingCall::Run(
        env, "opening " + pool + "/" + name, {Value()},
        [=](std::string& what) {
          int rc = OpenIoctx(c, pool, ns, &opened->io);
          if (rc < 0) {
            what = "opening pool " + pool;
            return rc;
          }
          const char* at = snap.empty() ? nullptr : snap.c_str();
          rc = readOnly ? rbd_open_read_only(opened->io, name.c_str(), &opened->image, at)
                        : rbd_open(opened->io, name.c_str(), &opened->image, nullptr);
          if (rc >= 0) {
            opened->eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            rc = opened->eventFd < 0 ? -errno : rbd_set_image_notification(opened->image, opened->eventFd, EVENT_TYPE_EVENTFD);
            if (rc < 0) {
              what = "setting up completion notification for " + pool + "/" + name;
              if (opened->eventFd >= 0) close(opened->eventFd);
              rbd_close(opened->image);
            }
          }
          if (rc < 0) {
            rados_ioctx_destroy(opened->io);
            opened->io = nullptr;
          }
          return rc;
        },
        [=, this](Napi::Env env) -> Napi::Value {
          OpenedImage o = *opened;
          // Value() again, not a handle from the call: that one's scope is gone.
          return Data(env)->image.New({Napi::External<OpenedImage>::New(env, &o), Value()});
        });
  }

  // create(pool, namespace, image, size, order (0: default), features (-1: default)): Promise<void>
  Napi::Value Create(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Connected(env)) return env.Undefined();
    std::string pool = StringArg(info[0]), ns = StringArg(info[1]), name = StringArg(info[2]);
    uint64_t size = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
    int64_t order = info[4].As<Napi::Number>().Int64Value();
    int64_t features = info[5].As<Napi::Number>().Int64Value();
    rados_t c = cluster_;
    return BlockingCall::Run(env, "creating " + pool + "/" + name, {Value()}, [=](std::string& what) {
      Ioctx ctx;
      int rc = OpenIoctx(c, pool, ns, &ctx.io);
      if (rc < 0) {
        what = "opening pool " + pool;
        return rc;
      }
      rbd_image_options_t opts;
      rbd_image_options_create(&opts);
      if (order > 0) rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_ORDER, static_cast<uint64_t>(order));
      if (features >= 0) rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, static_cast<uint64_t>(features));
      rc = rbd_create4(ctx.io, name.c_str(), size, opts);
      rbd_image_options_destroy(opts);
      return rc;
    });
  }

  // clone(parentPool, parentNamespace, parent, snapshot, pool, namespace, image): Promise<void>
  Napi::Value Clone(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Connected(env)) return env.Undefined();
    std::string ppool = StringArg(info[0]), pns = StringArg(info[1]), parent = StringArg(info[2]);
    std::string snap = StringArg(info[3]);
    std::string pool = StringArg(info[4]), ns = StringArg(info[5]), name = StringArg(info[6]);
    rados_t c = cluster_;
    return BlockingCall::Run(env, "cloning " + ppool + "/" + parent + "@" + snap, {Value()}, [=](std::string& what) {
      Ioctx from, to;
      int rc = OpenIoctx(c, ppool, pns, &from.io);
      if (rc >= 0) rc = OpenIoctx(c, pool, ns, &to.io);
      if (rc < 0) {
        what = "opening pool " + (from.io ? pool : ppool);
        return rc;
      }
      rbd_image_options_t opts;
      rbd_image_options_create(&opts);
      rc = rbd_clone3(from.io, parent.c_str(), snap.c_str(), to.io, name.c_str(), opts);
      rbd_image_options_destroy(opts);
      return rc;
    });
  }

  // shutdown(): Promise<void>; images opened on it must be closed first.
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    rados_t c = cluster_;
    cluster_ = nullptr;
    return BlockingCall::Run(info.Env(), "disconnecting from the cluster", {Value()}, [=](std::string&) {
      if (c) rados_shutdown(c);
      return 0;
    });
  }

  rados_t cluster_ = nullptr;
};

}  // namespace

Napi::Function DefineCluster(Napi::Env env) { return Cluster::Define(env); }

}  // namespace vblk_rbd
