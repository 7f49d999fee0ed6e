// The RBD addon: librbd and librados for vblk's rbd: images. It is built
// apart from the main addon (native/build.mjs), only where librbd's
// headers are installed, so a host without Ceph loses RBD and nothing else.

#include "rbd-addon.h"

namespace {

Napi::Value Version(const Napi::CallbackInfo& info) {
  int major = 0, minor = 0, extra = 0;
  rbd_version(&major, &minor, &extra);
  return Napi::String::New(info.Env(), std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(extra));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new vblk_rbd::AddonData();
  Napi::Function cluster = vblk_rbd::DefineCluster(env);
  Napi::Function image = vblk_rbd::DefineImage(env);
  data->cluster = Napi::Persistent(cluster);
  data->image = Napi::Persistent(image);
  env.SetInstanceData(data);
  exports.Set("Cluster", cluster);
  exports.Set("librbdVersion", Napi::Function::New(env, Version));
  return exports;
}

}  // namespace

NODE_API_MODULE(vblk_rbd, Init)
