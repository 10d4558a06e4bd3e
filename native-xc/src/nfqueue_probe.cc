// nfqueue_probe.cc: the NFQUEUE part's first binding — can this process bind a netfilter
// queue? Compiled only when libnetfilter-queue-dev's headers are present (binding.gyp).
// The output-buffer driver (network issue) joins this part.
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace remus {
namespace {

int NoopCallback(nfq_q_handle*, nfgenmsg*, nfq_data*, void*) { return 0; }

// nfqueueProbe(queueNum) -> { ok, errno, message }: opens, binds the queue, unbinds.
Napi::Value NfqueueProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "nfqueueProbe(queueNum)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t num = info[0].As<Napi::Number>().Uint32Value();
  Napi::Object r = Napi::Object::New(env);
  std::string message = "queue bound and released";
  int err = 0;
  nfq_handle* h = nfq_open();
  if (h == nullptr) {
    err = errno;
    message = std::string("nfq_open: ") + std::strerror(err);
  } else {
    nfq_q_handle* q = nfq_create_queue(h, num, &NoopCallback, nullptr);
    if (q == nullptr) {
      err = errno;
      message = std::string("nfq_create_queue: ") + std::strerror(err);
    } else {
      nfq_destroy_queue(q);
    }
    nfq_close(h);
  }
  r.Set("ok", err == 0 && h != nullptr);
  r.Set("errno", err);
  r.Set("message", message);
  return r;
}

}  // namespace

void InitNfqueue(Napi::Env env, Napi::Object exports) {
  exports.Set("nfqueueProbe", Napi::Function::New(env, NfqueueProbe));
}

}  // namespace remus
