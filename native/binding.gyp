{
  "targets": [
    {
      "target_name": "vblk_native",
      "sources": ["src/addon.cc", "src/aligned.cc", "src/completions.cc", "src/uring.cc", "src/aio.cc", "src/guest-memory.cc", "src/fd-watch.cc", "src/socket-write.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-std=c++17", "-O2"] },
      "conditions": [["OS=='linux'", { "libraries": ["-lrt"] }]]
    }
  ]
}
