// addon.cc: module entry of the remusdb native addon. The codec part always builds; parts
// that need system libraries are compiled only when their headers were found at build
// time, and `parts` tells TypeScript which ones this build has. `errorCodes` lists the
// codes any part can throw (errors.h), checked against TypeScript's ErrorCode at load.
#include <napi.h>
#include <time.h>

#include "errors.h"

namespace remus {
void InitCodec(Napi::Env env, Napi::Object exports);
void InitDirtyProbe(Napi::Env env, Napi::Object exports);
void InitArena(Napi::Env env, Napi::Object exports);
void InitCrc32c(Napi::Env env, Napi::Object exports);
void InitNetlink(Napi::Env env, Napi::Object exports);
void InitMallocTuning(Napi::Env env, Napi::Object exports);
#ifdef REMUS_HAVE_XEN
void InitXen(Napi::Env env, Napi::Object exports);
void InitXenSave(Napi::Env env, Napi::Object exports);
void InitXenLogdirty(Napi::Env env, Napi::Object exports);
#endif
#ifdef REMUS_HAVE_NFQUEUE
void InitNfqueue(Napi::Env env, Napi::Object exports);
void InitNfqueueDriver(Napi::Env env, Napi::Object exports);
#endif
#ifdef REMUS_HAVE_BPF
void InitBpfClassifier(Napi::Env env, Napi::Object exports);
#endif
}  // namespace remus

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in ns: what a step on the JS
  // thread cost, without the time other threads or processes ran meanwhile (benchmarks).
  exports.Set("threadCpuNs", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                timespec ts{};
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
                double ns = static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
                return Napi::Number::New(info.Env(), ns);
              }));
  exports.Set("setErrorClass", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                remus::SetErrorClass(info);
              }));
  Napi::Object parts = Napi::Object::New(env);
  remus::InitCodec(env, exports);
  remus::InitDirtyProbe(env, exports);
  remus::InitArena(env, exports);
  remus::InitCrc32c(env, exports);
  remus::InitNetlink(env, exports);
  remus::InitMallocTuning(env, exports);
  parts.Set("codec", true);
#ifdef REMUS_HAVE_XEN
  remus::InitXen(env, exports);
  remus::InitXenSave(env, exports);
  remus::InitXenLogdirty(env, exports);
  parts.Set("xen", true);
#else
  parts.Set("xen", false);
#endif
#ifdef REMUS_HAVE_NFQUEUE
  remus::InitNfqueue(env, exports);
  remus::InitNfqueueDriver(env, exports);
  parts.Set("nfqueue", true);
#else
  parts.Set("nfqueue", false);
#endif
#ifdef REMUS_HAVE_BPF
  remus::InitBpfClassifier(env, exports);
  parts.Set("bpf", true);
#else
  parts.Set("bpf", false);
#endif
  exports.Set("parts", parts);
  exports.Set("errorCodes", remus::ErrorCodeList(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(remusdb_native, Init)
