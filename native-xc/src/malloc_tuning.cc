// malloc_tuning.cc: keeps large transient buffers in memory the process already has.
//
// Why: replication allocates buffers of MiBs at a high rate (a pre-copy batch, its record,
// the decrypted stream on the backup) and frees them soon after. glibc serves every
// allocation above its mmap threshold with a fresh mmap and returns it with munmap, so each
// such buffer is first-touched again, page by page: on a virtualised dom0 that made copying
// 4 MiB into a new buffer cost 4.8 ms instead of 0.5 (docs/scale.md). Raising the mmap
// threshold (which also stops glibc from adjusting it) makes them heap allocations, and the
// trim threshold keeps that much freed memory in the heap instead of handing it back to the
// kernel at once. The cost is bounded resident memory: at most trimThresholdBytes of free
// heap stays mapped.
#include <malloc.h>
#include <napi.h>

#include <cstdint>

namespace remus {
namespace {

Napi::Value KeepLargeBuffersResident(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "keepLargeBuffersResident(mmapThresholdBytes, trimThresholdBytes)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t mmapThreshold = info[0].As<Napi::Number>().Int64Value();
  const int64_t trimThreshold = info[1].As<Napi::Number>().Int64Value();
  // glibc caps M_MMAP_THRESHOLD at HEAP_MAX/2 (32 MiB on 64-bit) and refuses larger values.
  const bool ok = mmapThreshold > 0 && trimThreshold > 0 && trimThreshold <= INT32_MAX &&
                  mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmapThreshold)) == 1 &&
                  mallopt(M_TRIM_THRESHOLD, static_cast<int>(trimThreshold)) == 1;
  return Napi::Boolean::New(env, ok);
}

}  // namespace

void InitMallocTuning(Napi::Env env, Napi::Object exports) {
  exports.Set("keepLargeBuffersResident", Napi::Function::New(env, KeepLargeBuffersResident));
}

}  // namespace remus
