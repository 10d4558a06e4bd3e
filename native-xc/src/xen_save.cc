// xen_save.cc: thin bindings to Xen for the Xen adapter — domain lookup and info, the
// domain's xl configuration as JSON, suspend through the xenstore control node, fast
// resume, and libxenguest's checkpointed (Remus) save loop run on its own thread. The save
// thread calls back into TypeScript for suspend / postcopy / checkpoint and waits for the
// answer: the rules (barriers, acks, intervals) stay in TypeScript. Every failure becomes
// RemusError ERR_XEN naming the Xen function and errno. A dying or destroyed domain ends a
// suspend wait at once (waiting out libxl's 60 s timeout loses the failover window).
#include <napi.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

#include "errors.h"
#include "xen_common.h"

namespace remus {
namespace {

std::string Fail(const char* fn, int err, const std::string& what = "") {
  return std::string(fn) + " failed" + (what.empty() ? "" : " (" + what + ")") + ": " + std::strerror(err) +
         " (errno " + std::to_string(err) + ")";
}

void ThrowXen(Napi::Env env, const std::string& msg) { ThrowRemus(env, ErrCode::kXen, msg); }

struct Handles {
  xc_interface* xch = nullptr;
  xs_handle* xsh = nullptr;
  std::string Open() {
    if (!xch) xch = xc_interface_open(QuietLogger(), QuietLogger(), 0);
    if (!xch) return Fail("xc_interface_open", errno, "is this a Xen dom0 with /dev/xen/privcmd?");
    if (!xsh) xsh = xs_open(0);
    if (!xsh) return Fail("xs_open", errno, "is xenstored running?");
    return "";
  }
  ~Handles() {
    if (xsh) xs_close(xsh);
    if (xch) xc_interface_close(xch);
  }
};

Handles& Js() {  // handles used from the JavaScript thread
  static Handles h;
  return h;
}

// 0 running, 1 suspended, -1 gone or dying; *why says what went wrong.
int DomainState(xc_interface* xch, uint32_t domid, std::string* why) {
  xc_dominfo_t i;
  if (xc_domain_getinfo(xch, domid, 1, &i) != 1 || i.domid != domid) return *why = "the domain no longer exists", -1;
  if (i.dying) return *why = "the domain is dying (destroyed)", -1;
  if (i.shutdown) {
    if (i.shutdown_reason == SHUTDOWN_suspend) return 1;
    return *why = "the domain shut down (reason " + std::to_string(i.shutdown_reason) + ")", -1;
  }
  return 0;
}

// Withdraws a suspend request the guest has not taken yet (the node still says "suspend"),
// in one xenstore transaction so that the guest cannot take it in between (libxl does the
// same). Returns false when the guest took it: it is suspending and cannot be stopped.
bool WithdrawSuspend(xs_handle* xsh, const std::string& path) {
  for (int attempt = 0; attempt < 16; attempt++) {
    xs_transaction_t t = xs_transaction_start(xsh);
    if (t == XBT_NULL) return false;
    unsigned int len = 0;
    char* v = static_cast<char*>(xs_read(xsh, t, path.c_str(), &len));
    bool pending = v != nullptr && std::string(v, len) == "suspend";
    free(v);
    if (pending) xs_write(xsh, t, path.c_str(), "", 0);
    if (xs_transaction_end(xsh, t, false)) return pending;
    if (errno != EAGAIN) return false;
  }
  return false;
}

// The PV suspend protocol: write "suspend" to control/shutdown, wait for the guest to take
// it (it clears the node), then for the domain to be shut down with SHUTDOWN_suspend. At
// the bound a request not yet taken is withdrawn; a taken one is waited for once more (a
// guest freezing its tasks under heavy I/O can be slow, and one left suspending would end
// up suspended with nobody to resume it).
std::string Suspend(xc_interface* xch, xs_handle* xsh, uint32_t domid, int timeoutMs) {
  std::string path = "/local/domain/" + std::to_string(domid) + "/control/shutdown", why;
  if (!xs_write(xsh, XBT_NULL, path.c_str(), "suspend", 7)) return Fail("xs_write", errno, path);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  bool extended = false;
  for (;;) {
    int s = DomainState(xch, domid, &why);
    if (s < 0) return "suspend: " + why;
    if (s == 1) return "";
    if (std::chrono::steady_clock::now() > deadline) {
      if (WithdrawSuspend(xsh, path))
        return "suspend: the guest did not take the suspend request within " + std::to_string(timeoutMs) + " ms";
      if (extended)
        return "suspend: the guest took the suspend request but did not suspend within " +
               std::to_string(2 * static_cast<int64_t>(timeoutMs)) + " ms";
      extended = true;
      deadline += std::chrono::milliseconds(timeoutMs);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::string Resume(xc_interface* xch, xs_handle* xsh, uint32_t domid) {
  if (xc_domain_resume(xch, domid, 1) != 0) return Fail("xc_domain_resume", errno);
  xs_resume_domain(xsh, domid);  // best effort, as xl does
  return "";
}

uint32_t ArgDomid(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) return 0xffffffffu;
  double d = info[i].As<Napi::Number>().DoubleValue();
  return d >= 0 && d < 0x7ff0 && d == static_cast<uint32_t>(d) ? static_cast<uint32_t>(d) : 0xffffffffu;
}

// xenDomainInfo(nameOrId) -> { domid, dying, shutdown, shutdownReason, paused, hvm, maxMemKb, pages, vcpus, maxGpfn? }
Napi::Value DomainInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string e = Js().Open();
  if (!e.empty()) return ThrowXen(env, e), env.Undefined();
  uint32_t domid = 0xffffffffu;
  if (info.Length() == 1 && info[0].IsString()) {
    libxl_ctx* ctx = nullptr;
    if (libxl_ctx_alloc(&ctx, LIBXL_VERSION, 0, QuietLogger()) != 0) return ThrowXen(env, Fail("libxl_ctx_alloc", errno)), env.Undefined();
    int rc = libxl_name_to_domid(ctx, info[0].As<Napi::String>().Utf8Value().c_str(), &domid);
    libxl_ctx_free(ctx);
    if (rc != 0) return ThrowRemus(env, ErrCode::kNoDomain, "no Xen domain is named " + info[0].As<Napi::String>().Utf8Value()), env.Undefined();
  } else {
    domid = ArgDomid(info, 0);
    if (domid == 0xffffffffu) return ThrowType(env, "xenDomainInfo(name: string | domid: number)"), env.Undefined();
  }
  xc_dominfo_t i;
  if (xc_domain_getinfo(Js().xch, domid, 1, &i) != 1 || i.domid != domid)
    return ThrowRemus(env, ErrCode::kNoDomain, "no Xen domain with id " + std::to_string(domid)), env.Undefined();
  Napi::Object r = Napi::Object::New(env);
  r.Set("domid", domid);
  r.Set("dying", static_cast<bool>(i.dying));
  r.Set("shutdown", static_cast<bool>(i.shutdown));
  r.Set("shutdownReason", i.shutdown_reason);
  r.Set("paused", static_cast<bool>(i.paused));
  r.Set("hvm", static_cast<bool>(i.hvm));
  r.Set("maxMemKb", static_cast<double>(i.max_memkb));
  r.Set("pages", static_cast<double>(i.nr_pages));
  r.Set("vcpus", i.nr_online_vcpus);
  xen_pfn_t gpfn = 0;  // highest guest pfn (PV: the p2m size the guest announced, minus one)
  if (xc_domain_maximum_gpfn(Js().xch, domid, &gpfn) == 0) r.Set("maxGpfn", static_cast<double>(gpfn));
  return r;
}

// xenDomainConfigJson(domid) -> the domain's libxl configuration as JSON (what xl sends)
Napi::Value DomainConfigJson(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info, 0);
  if (domid == 0xffffffffu) return ThrowType(env, "xenDomainConfigJson(domid)"), env.Undefined();
  libxl_ctx* ctx = nullptr;
  if (libxl_ctx_alloc(&ctx, LIBXL_VERSION, 0, QuietLogger()) != 0) return ThrowXen(env, Fail("libxl_ctx_alloc", errno)), env.Undefined();
  libxl_domain_config dc;
  libxl_domain_config_init(&dc);
  std::string out, err;
  if (libxl_retrieve_domain_configuration(ctx, domid, &dc, nullptr) != 0) {
    err = Fail("libxl_retrieve_domain_configuration", errno);
  } else {
    char* json = libxl_domain_config_to_json(ctx, &dc);
    if (json) out = json, free(json);
    else err = Fail("libxl_domain_config_to_json", errno);
  }
  libxl_domain_config_dispose(&dc);
  libxl_ctx_free(ctx);
  if (!err.empty()) return ThrowXen(env, err), env.Undefined();
  return Napi::String::New(env, out);
}

// xenSuspendAsync(domid, timeoutMs) -> Promise<void>: Suspend() above on a libuv pool thread,
// so that the JavaScript thread keeps answering heartbeats and acks while a guest takes its
// time to suspend (seconds under emulation). Its own handles, one suspend at a time.
std::mutex suspendMu;
Handles& SuspendHandles() {
  static Handles h;
  return h;
}

class SuspendWorker : public Napi::AsyncWorker {
 public:
  SuspendWorker(Napi::Env env, uint32_t domid, int timeoutMs)
      : Napi::AsyncWorker(env, "remusdb.xenSuspend"), deferred_(Napi::Promise::Deferred::New(env)), domid_(domid), timeoutMs_(timeoutMs) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }
  void Execute() override {
    std::lock_guard<std::mutex> lock(suspendMu);
    why_ = SuspendHandles().Open();
    if (why_.empty()) why_ = Suspend(SuspendHandles().xch, SuspendHandles().xsh, domid_, timeoutMs_);
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (why_.empty()) { deferred_.Resolve(env.Undefined()); return; }
    ThrowXen(env, why_);  // builds the injected RemusError; handed over as the rejection
    deferred_.Reject(env.GetAndClearPendingException().Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  uint32_t domid_;
  int timeoutMs_;
  std::string why_;
};

Napi::Value SuspendAsyncFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info, 0);
  if (domid == 0xffffffffu || info.Length() != 2 || !info[1].IsNumber()) return ThrowType(env, "xenSuspendAsync(domid, timeoutMs)"), env.Undefined();
  int timeoutMs = info[1].As<Napi::Number>().Int32Value();
  if (timeoutMs < 1 || timeoutMs > 600000) return ThrowRange(env, "xenSuspendAsync: timeoutMs 1..600000"), env.Undefined();
  auto* w = new SuspendWorker(env, domid, timeoutMs);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// xenResume(domid): synchronous, for the postcopy callback (fast resume).
Napi::Value ResumeFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info, 0);
  if (domid == 0xffffffffu) return ThrowType(env, "xenResume(domid)"), env.Undefined();
  std::string e = Js().Open();
  if (e.empty()) e = Resume(Js().xch, Js().xsh, domid);
  if (!e.empty()) return ThrowXen(env, e), env.Undefined();
  return env.Undefined();
}

// xenPause(domid): stops the domain's vCPUs (fencing: the backup took over).
Napi::Value PauseFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info, 0);
  if (domid == 0xffffffffu) return ThrowType(env, "xenPause(domid)"), env.Undefined();
  std::string e = Js().Open();
  if (e.empty() && xc_domain_pause(Js().xch, domid) != 0) e = Fail("xc_domain_pause", errno);
  if (!e.empty()) return ThrowXen(env, e), env.Undefined();
  return env.Undefined();
}

// One save loop. The thread blocks in each callback until TypeScript calls done(rc).
struct SaveRun {
  Napi::ThreadSafeFunction tsfn;
  Napi::Promise::Deferred deferred;
  uint32_t domid;
  int fd;
  std::mutex m;
  std::condition_variable cv;
  bool answered = false;
  int answer = 0;
  SaveRun(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  int Ask(const char* kind) {
    {
      std::lock_guard<std::mutex> lock(m);
      answered = false;
    }
    napi_status s = tsfn.BlockingCall([this, kind](Napi::Env env, Napi::Function dispatch) {
      Napi::Function done = Napi::Function::New(env, [this](const Napi::CallbackInfo& info) {
        int rc = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
        std::lock_guard<std::mutex> lock(m);
        if (answered) return;
        answered = true, answer = rc;
        cv.notify_one();
      });
      dispatch.Call({Napi::String::New(env, kind), done});
      if (env.IsExceptionPending()) {
        env.GetAndClearPendingException();
        std::lock_guard<std::mutex> lock(m);
        if (!answered) answered = true, answer = 0, cv.notify_one();
      }
    });
    if (s != napi_ok) return 0;  // the process is going away: stop the loop
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [this] { return answered; });
    return answer;
  }
};

int CbSuspend(void* d) { return static_cast<SaveRun*>(d)->Ask("suspend"); }
int CbPostcopy(void* d) { return static_cast<SaveRun*>(d)->Ask("postcopy"); }
int CbCheckpoint(void* d) { return static_cast<SaveRun*>(d)->Ask("checkpoint"); }
// libxc's HVM save ops (PVH is an HVM container) turn the device model's log-dirty on and
// off around the save. A PVH domain has no device model (libxl writes no EMULATOR records
// for it), so there is nothing to switch; HVM guests, which have one, are refused before a
// save starts (dom0/hypervisor/xen/xen-domain.ts).
int CbSwitchQemuLogdirty(uint32_t, unsigned, void*) { return 0; }

// xenSaveCheckpointed(domid, ioFd, dispatch(kind, done)) -> Promise<{ rc, errno, message }>
Napi::Value SaveCheckpointed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info, 0);
  if (domid == 0xffffffffu || info.Length() != 3 || !info[1].IsNumber() || !info[2].IsFunction())
    return ThrowType(env, "xenSaveCheckpointed(domid, ioFd, dispatch)"), env.Undefined();
  auto* run = new SaveRun(env);
  run->domid = domid;
  run->fd = info[1].As<Napi::Number>().Int32Value();
  // The run is freed by the finalizer, once the thread released the function and every
  // queued call ran.
  run->tsfn = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "xen-save", 0, 1,
                                            [](Napi::Env, SaveRun* r) { delete r; }, run);
  Napi::Promise promise = run->deferred.Promise();
  std::thread([run] {
    // libxc's own messages for the save loop go to stderr (the service log): when a save
    // fails, they say why better than errno alone.
    xentoollog_logger_stdiostream* lg = xtl_createlogger_stdiostream(stderr, getenv("REMUSDB_XEN_DEBUG") ? XTL_DEBUG : XTL_INFO, XTL_STDIOSTREAM_HIDE_PROGRESS);
    xentoollog_logger* logger = lg ? reinterpret_cast<xentoollog_logger*>(lg) : QuietLogger();
    xc_interface* xch = xc_interface_open(logger, logger, 0);
    int rc = -1, err = errno;
    std::string msg;
    if (!xch) {
      msg = Fail("xc_interface_open", errno);
    } else {
      save_callbacks cb{};
      cb.suspend = CbSuspend;
      cb.postcopy = CbPostcopy;
      cb.checkpoint = CbCheckpoint;
      cb.switch_qemu_logdirty = CbSwitchQemuLogdirty;
      cb.data = run;
      errno = 0;
      rc = xc_domain_save(xch, run->fd, run->domid, XCFLAGS_LIVE, &cb, XC_STREAM_REMUS, -1);
      err = errno;
      msg = rc == 0 ? "save loop ended" : Fail("xc_domain_save", err);
      xc_interface_close(xch);
    }
    if (lg) xtl_logger_destroy(reinterpret_cast<xentoollog_logger*>(lg));
    run->tsfn.BlockingCall([run, rc, err, msg](Napi::Env env, Napi::Function) {
      Napi::Object r = Napi::Object::New(env);
      r.Set("rc", rc);
      r.Set("errno", err);
      r.Set("message", msg);
      run->deferred.Resolve(r);
    });
    run->tsfn.Release();
  }).detach();
  return promise;
}

// makePipe() -> [readFd, writeFd]: a pipe for the save stream (libxc writes, xl or we read).
Napi::Value MakePipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // O_CLOEXEC: a receiver spawned with the read end must not inherit the write end too,
  // or it never sees the end of the stream (and never fails over).
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return ThrowRemus(env, ErrCode::kIo, Fail("pipe2", errno)), env.Undefined();
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, fds[0]);
  a.Set(1u, fds[1]);
  return a;
}

}  // namespace

void InitXenSave(Napi::Env env, Napi::Object exports) {
  exports.Set("xenDomainInfo", Napi::Function::New(env, DomainInfo));
  exports.Set("xenDomainConfigJson", Napi::Function::New(env, DomainConfigJson));
  exports.Set("xenSuspendAsync", Napi::Function::New(env, SuspendAsyncFn));
  exports.Set("xenResume", Napi::Function::New(env, ResumeFn));
  exports.Set("xenPause", Napi::Function::New(env, PauseFn));
  exports.Set("xenSaveCheckpointed", Napi::Function::New(env, SaveCheckpointed));
  exports.Set("makePipe", Napi::Function::New(env, MakePipe));
}

}  // namespace remus
