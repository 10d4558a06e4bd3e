// xen_probe.cc: the Xen part's first binding — can this process open the hypervisor
// interface? Compiled only when libxen-dev's headers are present (binding.gyp). The full
// libxenctrl/libxenguest bindings (issue: Xen adapter) join this part.
#include <napi.h>

#include "xen_common.h"

#include <cerrno>
#include <cstring>

namespace remus {
namespace {


// xenProbe() -> { ok, errno, message }
Napi::Value XenProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  errno = 0;
  xc_interface* xch = xc_interface_open(QuietLogger(), QuietLogger(), 0);
  int err = errno;
  r.Set("ok", xch != nullptr);
  r.Set("errno", err);
  r.Set("message", xch != nullptr ? "xc_interface_open succeeded" : std::strerror(err));
  if (xch != nullptr) xc_interface_close(xch);
  return r;
}

}  // namespace

void InitXen(Napi::Env env, Napi::Object exports) {
  exports.Set("xenProbe", Napi::Function::New(env, XenProbe));
}

}  // namespace remus
