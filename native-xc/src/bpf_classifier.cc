// bpf_classifier.cc: loads the in-kernel classifier (bpf/classify_tc.bpf.c, compiled to
// classify_tc.bpf.o next to the addon) with libbpf and attaches it as a tc filter on the
// ingress hook of the guest's interface (docs/commit-protection.md "In the kernel").
// The object's maps stay open in this process: `config` is written once, `epochs` at every
// barrier and release (one bpf() call each), `stats` read for status. The filter outlives
// a crash of this process (tc holds the program): a later setup replaces it (same handle
// and priority), and dom0/net/kernel-classifier.ts removes a leftover one with tc.
//   new BpfClassifier({objPath, ifname?, netnsPath?, ports, markMask, markHold, markFollow,
//                  flowsMax, epochOpen, epochReleased})
//   setEpochs(open, released); stats() -> number[PGW_STATS_N];
//   drainExposures() -> Buffer of struct pgw_exposure records (packets that left in the kernel),
//                 merged to one per flow and epoch (exposure_coalesce.h); exposuresRead() -> the
//                 records read from the ring so far, before merging
//   coalesceExposureRecords(buffer) -> the same merge of raw records (tests; a module function)
//   runStats() -> {runTimeNs, runCount}: the kernel's count of the program's runs and their
//                 time, kept while `runStats: true` was given (BPF_ENABLE_STATS; benchmarks)
//   testRun(frame, mark) -> {retval, mark}   (BPF_PROG_TEST_RUN: tests feed frames)
//   close()                                   detaches (when attached); idempotent
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/pkt_cls.h>
#include <napi.h>
#include <net/if.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <string>
#include <vector>

#include "bpf/classify_tc.h"
#include "errors.h"
#include "exposure_coalesce.h"
#include "netns.h"

namespace remus {
namespace {

std::string g_libbpfLog;  // the last load's libbpf messages (the verifier's log on failure)

int CollectLibbpfLog(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char line[1024];
  int n = vsnprintf(line, sizeof line, fmt, args);
  g_libbpfLog += line;
  if (g_libbpfLog.size() > 8192) g_libbpfLog.erase(0, g_libbpfLog.size() - 4096);  // the verdict is at the end
  return n;
}

std::string Why(const char* what, int err) {
  return std::string(what) + ": " + strerror(err < 0 ? -err : err);
}

uint32_t U32Of(const Napi::Object& o, const char* key) {
  return o.Get(key).As<Napi::Number>().Uint32Value();
}

class BpfClassifier : public Napi::ObjectWrap<BpfClassifier> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BpfClassifier",
                       {InstanceMethod("setEpochs", &BpfClassifier::SetEpochs),
                        InstanceMethod("stats", &BpfClassifier::Stats),
                        InstanceMethod("testRun", &BpfClassifier::TestRun),
                        InstanceMethod("drainExposures", &BpfClassifier::DrainExposures),
                        InstanceMethod("exposuresRead", &BpfClassifier::ExposuresRead),
                        InstanceMethod("runStats", &BpfClassifier::RunStats),
                        InstanceMethod("close", &BpfClassifier::Close)});
  }

  explicit BpfClassifier(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfClassifier>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      ThrowType(env, "new BpfClassifier({objPath, ifname?, netnsPath?, ports, markMask, markHold, markFollow, ...})");
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    for (const char* key : {"markMask", "markHold", "markFollow", "flowsMax", "epochOpen", "epochReleased"}) {
      if (!o.Get(key).IsNumber()) {
        ThrowType(env, std::string("BpfClassifier: ") + key + " must be a number");
        return;
      }
    }
    if (!o.Get("objPath").IsString() || !o.Get("ports").IsArray()) {
      ThrowType(env, "BpfClassifier: objPath must be a string and ports an array");
      return;
    }
    pgw_config cfg{};
    Napi::Array ports = o.Get("ports").As<Napi::Array>();
    if (ports.Length() < 1 || ports.Length() > PGW_PORTS_MAX) {
      ThrowRange(env, "BpfClassifier: 1 to PGW_PORTS_MAX ports");
      return;
    }
    for (uint32_t i = 0; i < ports.Length(); i++) cfg.ports[i] = ports.Get(i).As<Napi::Number>().Uint32Value();
    cfg.nports = ports.Length();
    if (!o.Get("mode").IsString() || !o.Get("dscp").IsNumber()) {
      ThrowType(env, "BpfClassifier: mode ('pgwire' | 'dscp') and dscp (a number)");
      return;
    }
    std::string mode = o.Get("mode").As<Napi::String>();
    if (mode != "pgwire" && mode != "dscp") {
      ThrowRange(env, "BpfClassifier: mode is 'pgwire' or 'dscp'");
      return;
    }
    cfg.mode = mode == "dscp" ? PGW_MODE_DSCP : PGW_MODE_PGWIRE;
    cfg.dscp = o.Get("dscp").As<Napi::Number>().Uint32Value();
    cfg.mark_mask = U32Of(o, "markMask");
    cfg.mark_hold = U32Of(o, "markHold");
    cfg.mark_follow = U32Of(o, "markFollow");
    uint32_t flowsMax = U32Of(o, "flowsMax");
    if (flowsMax < 1 || flowsMax > PGW_FLOWS_MAX) {
      ThrowRange(env, "BpfClassifier: flowsMax out of range");
      return;
    }
    if (o.Has("netnsPath") && o.Get("netnsPath").IsString()) netns_ = o.Get("netnsPath").As<Napi::String>();
    if (o.Get("runStats").ToBoolean()) statsEnableFd_ = bpf_enable_stats(BPF_STATS_RUN_TIME);
    std::string why = Load(o.Get("objPath").As<Napi::String>(), flowsMax, cfg);
    if (why.empty()) why = WriteEpochs(o.Get("epochOpen").As<Napi::Number>().Int64Value(),
                                       o.Get("epochReleased").As<Napi::Number>().Int64Value());
    if (why.empty() && o.Has("ifname") && o.Get("ifname").IsString()) {
      libbpf_print_fn_t old = libbpf_set_print(CollectLibbpfLog);  // an existing clsact hook is no news
      why = InNetns(netns_, [&] { return Attach(o.Get("ifname").As<Napi::String>()); });
      libbpf_set_print(old);
    }
    if (!why.empty()) {
      Release();
      ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: " + why);
    }
  }

  ~BpfClassifier() override { Release(); }

 private:
  std::string Load(const std::string& path, uint32_t flowsMax, const pgw_config& cfg) {
    g_libbpfLog.clear();
    libbpf_print_fn_t old = libbpf_set_print(CollectLibbpfLog);
    obj_ = bpf_object__open_file(path.c_str(), nullptr);
    std::string why;
    if (obj_ == nullptr) {
      why = Why(("open " + path).c_str(), errno);
    } else {
      int cpus = libbpf_num_possible_cpus();
      bpf_map* flows = bpf_object__find_map_by_name(obj_, "flows");
      bpf_map* scratch = bpf_object__find_map_by_name(obj_, "scratch");
      if (cpus <= 0 || flows == nullptr || scratch == nullptr) {
        why = "the object lacks its maps (or the CPU count is unknown)";
      } else {
        bpf_map__set_max_entries(flows, flowsMax);
        bpf_map__set_max_entries(scratch, static_cast<uint32_t>(cpus));
        int err = bpf_object__load(obj_);
        if (err != 0) why = Why(("load (the kernel's verifier said: " + g_libbpfLog + ")").c_str(), err);
      }
    }
    libbpf_set_print(old);
    if (!why.empty()) return why;
    bpf_program* prog = bpf_object__find_program_by_name(obj_, "classify");
    progFd_ = prog ? bpf_program__fd(prog) : -1;
    epochsFd_ = bpf_map__fd(bpf_object__find_map_by_name(obj_, "epochs"));
    statsFd_ = bpf_map__fd(bpf_object__find_map_by_name(obj_, "stats"));
    int configFd = bpf_map__fd(bpf_object__find_map_by_name(obj_, "config"));
    if (progFd_ < 0 || epochsFd_ < 0 || statsFd_ < 0 || configFd < 0) return "the object lacks its program or maps";
    rb_ = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj_, "exposures")), OnExposure, this, nullptr);
    if (rb_ == nullptr) return Why("open the exposure ring", errno);
    uint32_t zero = 0;
    if (bpf_map_update_elem(configFd, &zero, &cfg, BPF_ANY) != 0) return Why("write config", errno);
    return "";
  }

  std::string Attach(const std::string& ifname) {
    int ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
    if (ifindex == 0) return Why(("interface " + ifname).c_str(), errno);
    hook_ = bpf_tc_hook{};
    hook_.sz = sizeof hook_;
    hook_.ifindex = ifindex;
    hook_.attach_point = BPF_TC_INGRESS;
    int err = bpf_tc_hook_create(&hook_);
    if (err != 0 && err != -EEXIST) return Why(("create the clsact hook on " + ifname).c_str(), err);
    bpf_tc_opts opts{};
    opts.sz = sizeof opts;
    opts.handle = PGW_TC_HANDLE;
    opts.priority = PGW_TC_PRIORITY;
    opts.prog_fd = progFd_;
    opts.flags = BPF_TC_F_REPLACE;
    err = bpf_tc_attach(&hook_, &opts);
    if (err != 0) return Why(("attach to " + ifname + "'s ingress").c_str(), err);
    attached_ = true;
    return "";
  }

  std::string WriteEpochs(int64_t open, int64_t released) {
    if (open < 0 || released < 0) return "negative epoch";
    pgw_epochs e{static_cast<__u64>(open), static_cast<__u64>(released)};
    uint32_t zero = 0;
    if (bpf_map_update_elem(epochsFd_, &zero, &e, BPF_ANY) != 0) return Why("write epochs", errno);
    return "";
  }

  void Release() {
    if (attached_) {
      InNetns(netns_, [&] {
        bpf_tc_opts opts{};
        opts.sz = sizeof opts;
        opts.handle = PGW_TC_HANDLE;
        opts.priority = PGW_TC_PRIORITY;
        bpf_tc_detach(&hook_, &opts);  // an interface gone with its domain has no filter left
        return std::string();
      });
      attached_ = false;
    }
    if (statsEnableFd_ >= 0) close(statsEnableFd_);
    statsEnableFd_ = -1;
    if (rb_ != nullptr) ring_buffer__free(rb_);
    rb_ = nullptr;
    if (obj_ != nullptr) bpf_object__close(obj_);
    obj_ = nullptr;
    progFd_ = epochsFd_ = statsFd_ = -1;
  }

  bool Usable(Napi::Env env) {
    if (obj_ != nullptr) return true;
    ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: closed");
    return false;
  }

  Napi::Value SetEpochs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      ThrowType(env, "setEpochs(open: number, released: number)");
      return env.Undefined();
    }
    if (!Usable(env)) return env.Undefined();
    std::string why = WriteEpochs(info[0].As<Napi::Number>().Int64Value(), info[1].As<Napi::Number>().Int64Value());
    if (!why.empty()) ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: " + why);
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    int cpus = libbpf_num_possible_cpus();
    std::vector<uint64_t> perCpu(static_cast<size_t>(cpus > 0 ? cpus : 1));
    Napi::Array out = Napi::Array::New(env, PGW_STATS_N);
    for (uint32_t k = 0; k < PGW_STATS_N; k++) {
      uint64_t sum = 0;
      if (bpf_map_lookup_elem(statsFd_, &k, perCpu.data()) == 0)
        for (uint64_t v : perCpu) sum += v;
      out.Set(k, Napi::Number::New(env, static_cast<double>(sum)));
    }
    return out;
  }

  Napi::Value TestRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber()) {
      ThrowType(env, "testRun(frame: Uint8Array, mark: number)");
      return env.Undefined();
    }
    if (!Usable(env)) return env.Undefined();
    Napi::Uint8Array frame = info[0].As<Napi::Uint8Array>();
    __sk_buff in{}, out{};
    in.mark = info[1].As<Napi::Number>().Uint32Value();
    bpf_test_run_opts t{};
    t.sz = sizeof t;
    t.data_in = frame.Data();
    t.data_size_in = static_cast<__u32>(frame.ByteLength());
    t.ctx_in = &in;
    t.ctx_size_in = sizeof in;
    t.ctx_out = &out;
    t.ctx_size_out = sizeof out;
    t.repeat = 1;
    int err = bpf_prog_test_run_opts(progFd_, &t);
    if (err != 0) {
      ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: " + Why("BPF_PROG_TEST_RUN", err));
      return env.Undefined();
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("retval", Napi::Number::New(env, t.retval));
    r.Set("mark", Napi::Number::New(env, out.mark));
    return r;
  }

  static int OnExposure(void* ctx, void* data, size_t size) {
    auto* self = static_cast<BpfClassifier*>(ctx);
    if (size != sizeof(pgw_exposure)) return 0;
    pgw_exposure e;
    std::memcpy(&e, data, sizeof e);
    self->coalescer_.Add(e);
    return 0;
  }

  Napi::Value ExposuresRead(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(coalescer_.added()));
  }

  Napi::Value DrainExposures(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    drained_.clear();
    int n = ring_buffer__consume(rb_);
    coalescer_.Take(&drained_);  // what was read before a failure is not kept for the next drain
    if (n < 0) {
      ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: " + Why("read the exposure ring", n));
      return env.Undefined();
    }
    return Napi::Buffer<uint8_t>::Copy(env, drained_.data(), drained_.size());
  }

  Napi::Value RunStats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    bpf_prog_info pi{};
    __u32 len = sizeof pi;
    if (bpf_obj_get_info_by_fd(progFd_, &pi, &len) != 0) {
      ThrowRemus(env, ErrCode::kNetbuf, "in-kernel classifier: " + Why("read the program's info", errno));
      return env.Undefined();
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("runTimeNs", Napi::Number::New(env, static_cast<double>(pi.run_time_ns)));
    r.Set("runCount", Napi::Number::New(env, static_cast<double>(pi.run_cnt)));
    r.Set("counting", Napi::Boolean::New(env, statsEnableFd_ >= 0));
    return r;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  bpf_object* obj_ = nullptr;
  ring_buffer* rb_ = nullptr;
  ExposureCoalescer coalescer_;    // the records of the drain under way, merged
  std::vector<uint8_t> drained_;  // one drain's merged records (at most the ring's bytes)
  bpf_tc_hook hook_{};
  bool attached_ = false;
  std::string netns_;
  int progFd_ = -1, epochsFd_ = -1, statsFd_ = -1;
  int statsEnableFd_ = -1;  // while open, the kernel times every BPF program's runs
};

}  // namespace

static Napi::Value CoalesceExposureRecords(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsBuffer() ||
      info[0].As<Napi::Buffer<uint8_t>>().Length() % sizeof(pgw_exposure) != 0) {
    ThrowType(env, "coalesceExposureRecords(records: Buffer of whole pgw_exposure records)");
    return env.Undefined();
  }
  auto b = info[0].As<Napi::Buffer<uint8_t>>();
  ExposureCoalescer c;
  for (size_t at = 0; at < b.Length(); at += sizeof(pgw_exposure)) {
    pgw_exposure e;
    std::memcpy(&e, b.Data() + at, sizeof e);
    c.Add(e);
  }
  std::vector<uint8_t> out;
  c.Take(&out);
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

void InitBpfClassifier(Napi::Env env, Napi::Object exports) {
  exports.Set("BpfClassifier", BpfClassifier::Define(env));
  exports.Set("coalesceExposureRecords", Napi::Function::New(env, CoalesceExposureRecords));
  Napi::Object c = Napi::Object::New(env);
  c.Set("portsMax", PGW_PORTS_MAX);
  c.Set("flowsMax", PGW_FLOWS_MAX);
  c.Set("flowsMaxDefault", PGW_FLOWS_MAX_DEFAULT);
  c.Set("heldRanges", PGW_HELD_RANGES);
  c.Set("segmentBytes", PGW_SEGMENT_BYTES);
  c.Set("statsCount", static_cast<int>(PGW_STATS_N));
  c.Set("exposureBytes", static_cast<int>(sizeof(pgw_exposure)));
  c.Set("exposureRingBytes", PGW_EXPOSURE_RING_BYTES);
  c.Set("tcHandle", PGW_TC_HANDLE);
  c.Set("tcPriority", PGW_TC_PRIORITY);
  exports.Set("bpfClassifierConstants", c);
}

}  // namespace remus
