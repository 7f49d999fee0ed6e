// Shared declarations of the RBD addon (vblk_rbd.node): a Cluster is one
// librados connection; an Image is one open RBD image on it. See
// cluster.cc and image.cc.

#pragma once

#include <napi.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

#include <string>

namespace vblk_rbd {

/** The constructors the addon makes its objects with (per Node environment). */
struct AddonData {
  Napi::FunctionReference cluster;
  Napi::FunctionReference image;
};

inline AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

/** What a new Image is made from (passed to its constructor as an External). */
struct OpenedImage {
  rados_ioctx_t io;
  rbd_image_t image;
  /** The eventfd librbd signals completions on. */
  int eventFd;
};

Napi::Function DefineCluster(Napi::Env env);
Napi::Function DefineImage(Napi::Env env);

/** An I/O context on pool/namespace; 0 or -errno. */
int OpenIoctx(rados_t cluster, const std::string& pool, const std::string& ns, rados_ioctx_t* io);

}  // namespace vblk_rbd
