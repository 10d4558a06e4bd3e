{
  "variables": {
    "has_xen%": "<!(sh ./detect.sh xen)",
    "has_nfqueue%": "<!(sh ./detect.sh nfqueue)",
    "has_bpf%": "<!(sh ./detect.sh bpf)"
  },
  "targets": [
    {
      "target_name": "remusdb_native",
      "sources": ["src/addon.cc", "src/errors.cc", "src/page_codec.cc", "src/codec_binding.cc", "src/batch_codec.cc", "src/dirty_probe.cc", "src/arena.cc", "src/crc32c.cc", "src/netlink.cc", "src/malloc_tuning.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=gnu++17", "-O2", "-Wall", "-Wextra", "-fno-exceptions"],
      "libraries": ["-llz4", "-lzstd"],
      "conditions": [
        ["has_xen==1", {
          "sources": ["src/xen_probe.cc", "src/xen_save.cc", "src/xen_logdirty.cc"],
          "defines": ["REMUS_HAVE_XEN"],
          "libraries": ["-lxenctrl", "-lxenguest", "-lxenstore", "-lxenlight", "-lxentoollog", "-lxenforeignmemory", "-lxenevtchn"]
        }],
        ["has_nfqueue==1", {
          "sources": ["src/nfqueue_probe.cc", "src/nfqueue_driver.cc"],
          "defines": ["REMUS_HAVE_NFQUEUE"],
          "libraries": ["-lnetfilter_queue"]
        }],
        ["has_bpf==1", {
          "sources": ["src/bpf_classifier.cc", "src/exposure_coalesce.cc"],
          "defines": ["REMUS_HAVE_BPF"],
          "libraries": ["-lbpf"],
          "dependencies": ["classify_tc_bpf"]
        }]
      ]
    },
    {
      "target_name": "classify_tc_bpf",
      "type": "none",
      "conditions": [
        ["has_bpf==1", {
          "actions": [{
            "action_name": "clang_target_bpf",
            "inputs": ["src/bpf/classify_tc.bpf.c", "src/bpf/classify_tc.h"],
            "outputs": ["<(PRODUCT_DIR)/classify_tc.bpf.o"],
            "action": ["clang", "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
                       "-I/usr/include/<!(gcc -print-multiarch)", "-c", "src/bpf/classify_tc.bpf.c",
                       "-o", "<(PRODUCT_DIR)/classify_tc.bpf.o"]
          }]
        }]
      ]
    }
  ]
}
