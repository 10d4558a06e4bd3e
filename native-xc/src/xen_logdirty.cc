// xen_logdirty.cc: thin bindings for `remusdb record` — the hypervisor's log-dirty mode
// (enable, disable, read-and-clear the dirty bitmap) and read-only foreign mapping of a
// running domain's pages. The loop and its rules live in TypeScript
// (dom0/hypervisor/xen/xen-record.ts). Every failure is RemusError ERR_XEN with the Xen
// function, errno and its name in the message and { fn, errno } in the details, so the
// caller can tell "log-dirty already on" (EINVAL) from "no shadow paging" (EOPNOTSUPP).
// Handles: one xc_interface and one xenforeignmemory handle for the JavaScript thread,
// opened on first use; for a PV domain the guest's p2m (pfn -> mfn) is mapped once per
// domain and released by xenMapRelease().
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <sys/mman.h>

#include "errors.h"
#include "xen_common.h"

extern "C" {
#include <xenforeignmemory.h>
}

namespace remus {
namespace {

constexpr size_t kPageBytes = 4096;
constexpr uint32_t kMapBatchMax = 1024;
constexpr uint32_t kBadDomid = 0xffffffffu;

void ThrowXenErrno(Napi::Env env, const char* fn, int err, const std::string& what) {
  std::string msg = std::string(fn) + " failed" + (what.empty() ? "" : " (" + what + ")") + ": " +
                    std::strerror(err) + " (errno " + std::to_string(err) + ")";
  Napi::Object details = Napi::Object::New(env);
  details.Set("fn", fn);
  details.Set("errno", err);
  ThrowRemus(env, ErrCode::kXen, msg, details);
}

// The guest's pfn -> mfn table (PV only: HVM/PVH gfns are mapped directly).
struct Mapper {
  uint32_t domid = kBadDomid;
  bool pv = false;
  bool haveMeminfo = false;
  xc_domain_meminfo meminfo{};
};

struct State {
  xc_interface* xch = nullptr;
  xenforeignmemory_handle* fmem = nullptr;
  Mapper map;
  ~State() { Release(), CloseAll(); }
  int OpenXc() {
    if (!xch) xch = xc_interface_open(QuietLogger(), QuietLogger(), 0);
    return xch ? 0 : (errno ? errno : ENODEV);
  }
  int OpenFmem() {
    if (!fmem) fmem = xenforeignmemory_open(QuietLogger(), 0);
    return fmem ? 0 : (errno ? errno : ENODEV);
  }
  void Release() {
    if (map.haveMeminfo && xch) xc_unmap_domain_meminfo(xch, &map.meminfo);
    map = Mapper();
  }
  void CloseAll() {
    if (fmem) xenforeignmemory_close(fmem), fmem = nullptr;
    if (xch) xc_interface_close(xch), xch = nullptr;
  }
};

State& St() {
  static State s;
  return s;
}

uint32_t ArgDomid(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) return kBadDomid;
  double d = info[0].As<Napi::Number>().DoubleValue();
  return d >= 1 && d < 0x7ff0 && d == static_cast<uint32_t>(d) ? static_cast<uint32_t>(d) : kBadDomid;
}

bool OpenOrThrow(Napi::Env env) {
  int err = St().OpenXc();
  if (err) ThrowXenErrno(env, "xc_interface_open", err, "is this a Xen dom0 with /dev/xen/privcmd?");
  return err == 0;
}

Napi::Value Control(const Napi::CallbackInfo& info, unsigned int op, const char* what) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info);
  if (domid == kBadDomid) return ThrowType(env, std::string(what) + "(domid >= 1)"), env.Undefined();
  if (!OpenOrThrow(env)) return env.Undefined();
  errno = 0;
  if (xc_logdirty_control(St().xch, domid, op, nullptr, 0, 0, nullptr) < 0) {
    ThrowXenErrno(env, "xc_logdirty_control", errno, std::string(what) + " of domain " + std::to_string(domid));
  }
  return env.Undefined();
}

// xenLogdirtyEnable(domid) / xenLogdirtyDisable(domid)
Napi::Value Enable(const Napi::CallbackInfo& info) {
  return Control(info, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, "xenLogdirtyEnable");
}
Napi::Value Disable(const Napi::CallbackInfo& info) {
  return Control(info, XEN_DOMCTL_SHADOW_OP_OFF, "xenLogdirtyDisable");
}

uint32_t CountBits(const uint8_t* p, size_t n) {
  uint32_t c = 0;
  for (size_t i = 0; i < n; i++) c += static_cast<uint32_t>(__builtin_popcount(p[i]));
  return c;
}

// xenLogdirtyPeekClean(domid, bitmap: Buffer, clean = true) -> dirty pages: the bitmap
// since the last clean (bit i = pfn i, bytes little-endian), cleared in Xen unless clean is
// false (PEEK: leaves the bitmap to its owner; all zero while log-dirty is off).
Napi::Value PeekClean(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info);
  bool badClean = info.Length() == 3 && !info[2].IsBoolean();
  if (domid == kBadDomid || info.Length() < 2 || info.Length() > 3 || !info[1].IsBuffer() || badClean)
    return ThrowType(env, "xenLogdirtyPeekClean(domid, bitmap: Buffer, clean?: boolean)"), env.Undefined();
  unsigned int op = info.Length() == 3 && !info[2].As<Napi::Boolean>().Value() ? XEN_DOMCTL_SHADOW_OP_PEEK : XEN_DOMCTL_SHADOW_OP_CLEAN;
  auto bitmap = info[1].As<Napi::Buffer<uint8_t>>();
  size_t bytes = bitmap.Length();
  if (bytes == 0 || bytes % 8 != 0 || bytes > (size_t{1} << 28))
    return ThrowRange(env, "xenLogdirtyPeekClean: bitmap length must be a positive multiple of 8 bytes"), env.Undefined();
  if (!OpenOrThrow(env)) return env.Undefined();
  xc_interface* xch = St().xch;
  size_t nrPages = (bytes + kPageBytes - 1) / kPageBytes;
  // A hypercall buffer built by hand: libxc's DECLARE_HYPERCALL_BUFFER macro uses C-only
  // designated initializers out of declaration order, which C++ rejects.
  xc_hypercall_buffer_t hb{};
  hb.ubuf = reinterpret_cast<void*>(-1);
  auto* hbuf = static_cast<uint8_t*>(xc__hypercall_buffer_alloc_pages(xch, &hb, static_cast<int>(nrPages)));
  if (!hbuf) return ThrowXenErrno(env, "xc_hypercall_buffer_alloc_pages", errno ? errno : ENOMEM, ""), env.Undefined();
  std::memset(hbuf, 0, bytes);
  errno = 0;
  long long rc = xc_logdirty_control(xch, domid, op, &hb,
                                     static_cast<unsigned long>(bytes * 8), 0, nullptr);
  int err = errno;
  if (rc >= 0) std::memcpy(bitmap.Data(), hbuf, bytes);
  xc__hypercall_buffer_free_pages(xch, &hb, static_cast<int>(nrPages));
  if (rc < 0) return ThrowXenErrno(env, "xc_logdirty_control", err, std::string(op == XEN_DOMCTL_SHADOW_OP_PEEK ? "PEEK" : "CLEAN") + " of domain " + std::to_string(domid)), env.Undefined();
  return Napi::Number::New(env, CountBits(bitmap.Data(), bytes));
}

// The cached mapper for domid: PV domains get their p2m mapped (errno on failure).
int MapperFor(uint32_t domid) {
  State& s = St();
  if (s.map.domid == domid) return 0;
  s.Release();
  xc_dominfo_t di;
  if (xc_domain_getinfo(s.xch, domid, 1, &di) != 1 || di.domid != domid) return ESRCH;
  s.map.pv = !di.hvm;
  if (s.map.pv) {
    errno = 0;
    if (xc_map_domain_meminfo(s.xch, domid, &s.map.meminfo) != 0) {
      int err = errno ? errno : EFAULT;
      s.map = Mapper();
      return err;
    }
    s.map.haveMeminfo = true;
  }
  s.map.domid = domid;
  return 0;
}

// pfn -> frame to map; false when the guest has no frame there. A PV guest's p2m entry is
// an mfn, or has one of its top two bits set (invalid, or Linux's foreign / identity
// markers for frames that are not its RAM).
bool Frame(const Mapper& m, uint64_t pfn, xen_pfn_t* out) {
  if (!m.pv) return *out = static_cast<xen_pfn_t>(pfn), true;
  if (pfn >= m.meminfo.p2m_size) return false;
  uint64_t mfn;
  if (m.meminfo.guest_width == 8) {
    mfn = reinterpret_cast<const volatile uint64_t*>(m.meminfo.p2m_table)[pfn];
    if (mfn >> 62) return false;
  } else {
    mfn = reinterpret_cast<const volatile uint32_t*>(m.meminfo.p2m_table)[pfn];
    if (mfn >> 30) return false;
  }
  *out = static_cast<xen_pfn_t>(mfn);
  return true;
}

// xenMapRead(domid, pfns: Uint32Array | BigUint64Array, out: Buffer, errs: Int32Array) ->
// pages read. Maps pfns read-only (at most 1024), copies page i to out[i * 4096], unmaps.
// errs[i] = 0 when page i was read, else its errno (its bytes in out are then zero).
Napi::Value MapRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domid = ArgDomid(info);
  if (domid == kBadDomid || info.Length() != 4 || !info[1].IsTypedArray() || !info[2].IsBuffer() || !info[3].IsTypedArray())
    return ThrowType(env, "xenMapRead(domid, pfns: Uint32Array | BigUint64Array, out: Buffer, errs: Int32Array)"), env.Undefined();
  auto ta = info[1].As<Napi::TypedArray>();
  napi_typedarray_type t = ta.TypedArrayType();
  if (t != napi_uint32_array && t != napi_biguint64_array) return ThrowType(env, "xenMapRead: pfns must be a Uint32Array or BigUint64Array"), env.Undefined();
  auto errsTa = info[3].As<Napi::TypedArray>();
  if (errsTa.TypedArrayType() != napi_int32_array) return ThrowType(env, "xenMapRead: errs must be an Int32Array"), env.Undefined();
  size_t n = ta.ElementLength();
  auto out = info[2].As<Napi::Buffer<uint8_t>>();
  int32_t* errs = errsTa.As<Napi::Int32Array>().Data();
  if (n == 0 || n > kMapBatchMax || out.Length() < n * kPageBytes || errsTa.ElementLength() < n)
    return ThrowRange(env, "xenMapRead: 1..1024 pfns, out >= 4096 * pfns bytes, errs >= pfns entries"), env.Undefined();
  if (!OpenOrThrow(env)) return env.Undefined();
  int err = St().OpenFmem();
  if (err) return ThrowXenErrno(env, "xenforeignmemory_open", err, ""), env.Undefined();
  err = MapperFor(domid);
  if (err) return ThrowXenErrno(env, "xc_map_domain_meminfo", err, "the p2m of domain " + std::to_string(domid)), env.Undefined();
  const Mapper& m = St().map;
  xen_pfn_t frames[kMapBatchMax];
  int mapErr[kMapBatchMax];
  uint32_t idx[kMapBatchMax];  // frames[k] is pfns[idx[k]]
  size_t k = 0;
  const uint32_t* pfn32 = t == napi_uint32_array ? ta.As<Napi::Uint32Array>().Data() : nullptr;
  const uint64_t* pfn64 = t == napi_biguint64_array ? ta.As<Napi::BigUint64Array>().Data() : nullptr;
  for (size_t i = 0; i < n; i++) {
    uint64_t pfn = pfn32 ? pfn32[i] : pfn64[i];
    std::memset(out.Data() + i * kPageBytes, 0, kPageBytes);
    if (!Frame(m, pfn, &frames[k])) { errs[i] = ENOENT; continue; }
    errs[i] = 0, idx[k++] = static_cast<uint32_t>(i);
  }
  uint32_t read = 0;
  if (k == 0) return Napi::Number::New(env, 0);
  errno = 0;
  void* addr = xenforeignmemory_map(St().fmem, domid, PROT_READ, k, frames, mapErr);
  if (!addr) {
    int e = errno ? errno : EFAULT;
    for (size_t j = 0; j < k; j++) errs[idx[j]] = e;
    return Napi::Number::New(env, 0);
  }
  for (size_t j = 0; j < k; j++) {
    if (mapErr[j] != 0) { errs[idx[j]] = mapErr[j] < 0 ? -mapErr[j] : mapErr[j]; continue; }
    std::memcpy(out.Data() + size_t{idx[j]} * kPageBytes, static_cast<uint8_t*>(addr) + j * kPageBytes, kPageBytes);
    read++;
  }
  xenforeignmemory_unmap(St().fmem, addr, k);
  return Napi::Number::New(env, read);
}

// xenMapRelease(): drops the cached p2m mapping and closes the foreign-memory handle.
Napi::Value MapRelease(const Napi::CallbackInfo& info) {
  State& s = St();
  s.Release();
  if (s.fmem) xenforeignmemory_close(s.fmem), s.fmem = nullptr;
  return info.Env().Undefined();
}

}  // namespace

void InitXenLogdirty(Napi::Env env, Napi::Object exports) {
  exports.Set("xenLogdirtyEnable", Napi::Function::New(env, Enable));
  exports.Set("xenLogdirtyDisable", Napi::Function::New(env, Disable));
  exports.Set("xenLogdirtyPeekClean", Napi::Function::New(env, PeekClean));
  exports.Set("xenMapRead", Napi::Function::New(env, MapRead));
  exports.Set("xenMapRelease", Napi::Function::New(env, MapRelease));
}

}  // namespace remus
