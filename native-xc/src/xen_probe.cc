// xen_probe.cc: the Xen part's first binding — can this process open the hypervisor
// interface? Compiled only when libxen-dev's headers are present (binding.gyp). The full
// libxenctrl/libxenguest bindings (issue: Xen adapter) join this part.
#include <napi.h>

// Xen 4.17's headers declare C functions without extern "C" for C++ callers: without this
// wrapper the addon would ask for C++-mangled names and fail at the first call.
extern "C" {
#include <xenctrl.h>
#include <xentoollog.h>
}

#include <cerrno>
#include <cstring>

namespace remus {
namespace {

// A logger that drops libxc's own messages: errors come back through errno and our
// RemusError messages, not as stray lines on stderr.
void QuietMessage(xentoollog_logger*, xentoollog_level, int, const char*, const char*, va_list) {}
void QuietProgress(xentoollog_logger*, const char*, const char*, int, unsigned long, unsigned long) {}
void QuietDestroy(xentoollog_logger*) {}
xentoollog_logger quietLogger = {QuietMessage, QuietProgress, QuietDestroy};

// xenProbe() -> { ok, errno, message }
Napi::Value XenProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  errno = 0;
  xc_interface* xch = xc_interface_open(&quietLogger, &quietLogger, 0);
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
