// arena.cc: guest memory of a simulated domain. The arena is anonymous memory mapped once
// and shared by the threads of this process (the vCPU worker attaches by id); each thread
// sees it as an external ArrayBuffer. Dirty pages are tracked by the kernel, as a
// hypervisor's log-dirty mode would: userfaultfd write-protection in asynchronous mode plus
// the PAGEMAP_SCAN ioctl, which returns the written pages and re-protects them in one call.
// Kernels without it fall back to hashing every page (slow; `dirtyMode` says which).
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "errors.h"
#include "page_codec.h"
#include "uffd_wp.h"

namespace remus {
namespace {

struct Region {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  int uffd = -1;
  int pagemap = -1;
  bool tracking = false;
  std::vector<uint64_t> hashes;  // fallback mode: last seen hash per page
  ~Region() {
    if (pagemap >= 0) close(pagemap);
    if (uffd >= 0) close(uffd);
    if (base != nullptr) munmap(base, bytes);
  }
};

std::mutex registryMutex;
std::map<uint32_t, std::shared_ptr<Region>> registry;
uint32_t nextId = 1;

uint64_t HashPage(const uint8_t* p) {  // FNV-1a over 64-bit words; fallback mode only
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < kPageSize; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ULL;
  }
  return h;
}

std::string StartTracking(Region& r) {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return std::string("userfaultfd: ") + std::strerror(errno);
  r.uffd = fd;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
  if (ioctl(fd, UFFDIO_API, &api) != 0) return std::string("UFFDIO_API: ") + std::strerror(errno);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uint64_t>(r.base);
  reg.range.len = r.bytes;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return std::string("UFFDIO_REGISTER: ") + std::strerror(errno);
  uffdio_writeprotect wp{};
  wp.range = reg.range;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) != 0)
    return std::string("UFFDIO_WRITEPROTECT: ") + std::strerror(errno);
  r.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (r.pagemap < 0) return std::string("open /proc/self/pagemap: ") + std::strerror(errno);
  return "";
}

// Collects written pages since the last call (and re-protects them). Returns count or -1.
long ScanWritten(Region& r, uint32_t* out, size_t cap, std::string* why) {
  constexpr size_t kVec = 512;
  page_region vec[kVec];
  uint64_t start = reinterpret_cast<uint64_t>(r.base), end = start + r.bytes;
  size_t n = 0;
  while (start < end) {
    pm_scan_arg arg{};
    arg.size = sizeof arg;
    arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    arg.start = start;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(vec);
    arg.vec_len = kVec;
    arg.category_mask = arg.return_mask = PAGE_IS_WRITTEN;
    long got = ioctl(r.pagemap, PAGEMAP_SCAN, &arg);
    if (got < 0) {
      *why = std::string("PAGEMAP_SCAN: ") + std::strerror(errno);
      return -1;
    }
    for (long i = 0; i < got; i++) {
      for (uint64_t a = vec[i].start; a < vec[i].end; a += kPageSize) {
        if (n == cap) {
          *why = "dirty page list overflow";
          return -1;
        }
        out[n++] = static_cast<uint32_t>((a - reinterpret_cast<uint64_t>(r.base)) / kPageSize);
      }
    }
    if (arg.walk_end <= start) break;
    start = arg.walk_end;  // the walk stops early when vec fills: go on from there
  }
  return static_cast<long>(n);
}

long HashWritten(Region& r, uint32_t* out, size_t cap) {
  size_t pages = r.bytes / kPageSize, n = 0;
  for (size_t p = 0; p < pages; p++) {
    uint64_t h = HashPage(r.base + p * kPageSize);
    if (h != r.hashes[p]) {
      r.hashes[p] = h;
      if (n < cap) out[n] = static_cast<uint32_t>(p);
      n++;
    }
  }
  return n > cap ? -1 : static_cast<long>(n);
}

class Arena : public Napi::ObjectWrap<Arena> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Arena",
                       {InstanceMethod("startDirtyTracking", &Arena::StartDirty),
                        InstanceMethod("collectDirty", &Arena::CollectDirty),
                        InstanceMethod("copyPages", &Arena::CopyPages),
                        InstanceMethod("close", &Arena::Close),
                        InstanceAccessor("id", &Arena::Id, nullptr),
                        InstanceAccessor("buffer", &Arena::Buffer, nullptr),
                        InstanceAccessor("pageCount", &Arena::PageCount, nullptr),
                        InstanceAccessor("dirtyMode", &Arena::DirtyMode, nullptr)});
  }

  // new Arena(bytes) creates; new Arena(0, id) attaches to an existing arena (worker).
  explicit Arena(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Arena>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      ThrowType(env, "new Arena(bytes) or new Arena(0, id)");
      return;
    }
    double bytes = info[0].As<Napi::Number>().DoubleValue();
    if (bytes == 0 && info.Length() == 2 && info[1].IsNumber()) {
      std::lock_guard<std::mutex> lock(registryMutex);
      auto it = registry.find(info[1].As<Napi::Number>().Uint32Value());
      if (it == registry.end()) {
        ThrowRange(env, "Arena: no arena with that id");
        return;
      }
      region_ = it->second;
      id_ = it->first;
      return;
    }
    if (!(bytes >= kPageSize && bytes <= 64.0 * (1ULL << 30)) ||
        static_cast<uint64_t>(bytes) % kPageSize != 0) {
      ThrowRange(env, "Arena: bytes must be a multiple of 4096 in [4096, 64 GiB]");
      return;
    }
    auto r = std::make_shared<Region>();
    r->bytes = static_cast<size_t>(bytes);
    void* p = mmap(nullptr, r->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      ThrowRemus(env, "ERR_OUT_OF_MEMORY", "cannot map " + std::to_string(r->bytes) + " bytes of guest memory");
      return;
    }
    r->base = static_cast<uint8_t*>(p);
    std::lock_guard<std::mutex> lock(registryMutex);
    id_ = nextId++;
    registry[id_] = r;
    region_ = r;
    owner_ = true;
  }

 private:
  bool Check(Napi::Env env) {
    if (region_) return true;
    ThrowType(env, "Arena is closed");
    return false;
  }
  Napi::Value Id(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), id_); }
  Napi::Value PageCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), region_ ? static_cast<double>(region_->bytes / kPageSize) : 0);
  }
  Napi::Value DirtyMode(const Napi::CallbackInfo& info) {
    const char* m = !region_ || !region_->tracking ? "off" : region_->uffd >= 0 && region_->pagemap >= 0 ? "uffd-wp" : "hash";
    return Napi::String::New(info.Env(), m);
  }
  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    // The region outlives this ArrayBuffer: the finalizer holds a reference to it.
    auto* keep = new std::shared_ptr<Region>(region_);
    return Napi::ArrayBuffer::New(env, region_->base, region_->bytes,
                                  [](Napi::Env, void*, std::shared_ptr<Region>* k) { delete k; }, keep);
  }
  // startDirtyTracking() -> mode: "uffd-wp" or "hash" (with the reason uffd failed)
  Napi::Value StartDirty(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    Region& r = *region_;
    Napi::Object res = Napi::Object::New(env);
    if (r.tracking) return ThrowType(env, "dirty tracking already started"), env.Undefined();
    std::string why = StartTracking(r);
    r.tracking = true;
    if (!why.empty()) {
      if (r.uffd >= 0) close(r.uffd), r.uffd = -1;
      if (r.pagemap >= 0) close(r.pagemap), r.pagemap = -1;
      size_t pages = r.bytes / kPageSize;
      r.hashes.assign(pages, 0);
      for (size_t p = 0; p < pages; p++) r.hashes[p] = HashPage(r.base + p * kPageSize);
    }
    res.Set("mode", why.empty() ? "uffd-wp" : "hash");
    res.Set("reason", why);
    return res;
  }
  // collectDirty(out: Uint32Array) -> count of pages written since the last call
  Napi::Value CollectDirty(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
      return ThrowType(env, "collectDirty(out: Uint32Array)"), env.Undefined();
    if (!region_->tracking) return ThrowType(env, "collectDirty: tracking not started"), env.Undefined();
    auto out = info[0].As<Napi::Uint32Array>();
    std::string why;
    long n = region_->uffd >= 0 ? ScanWritten(*region_, out.Data(), out.ElementLength(), &why)
                                : HashWritten(*region_, out.Data(), out.ElementLength());
    if (n < 0) {
      ThrowRemus(env, "ERR_DIRTY_TRACKING", "dirty tracking failed: " + (why.empty() ? std::string("list overflow") : why));
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(n));
  }
  // copyPages(pfns: Uint32Array, count, dst: Uint8Array): dst[i] = page pfns[i]
  Napi::Value CopyPages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray())
      return ThrowType(env, "copyPages(pfns: Uint32Array, count, dst: Uint8Array)"), env.Undefined();
    auto pfns = info[0].As<Napi::Uint32Array>();
    auto dst = info[2].As<Napi::Uint8Array>();
    size_t count = info[1].As<Napi::Number>().Uint32Value();
    size_t pages = region_->bytes / kPageSize;
    if (count > pfns.ElementLength() || dst.ByteLength() < count * kPageSize)
      return ThrowRange(env, "copyPages: count exceeds pfns or dst"), env.Undefined();
    for (size_t i = 0; i < count; i++)
      if (pfns[i] >= pages) return ThrowRange(env, "copyPages: pfn out of range"), env.Undefined();
    for (size_t i = 0; i < count; i++)
      std::memcpy(dst.Data() + i * kPageSize, region_->base + static_cast<size_t>(pfns[i]) * kPageSize, kPageSize);
    return env.Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (owner_) {
      std::lock_guard<std::mutex> lock(registryMutex);
      registry.erase(id_);
    }
    region_.reset();  // idempotent; memory goes when the last ArrayBuffer view is collected
    return info.Env().Undefined();
  }

  std::shared_ptr<Region> region_;
  uint32_t id_ = 0;
  bool owner_ = false;
};

}  // namespace

void InitArena(Napi::Env env, Napi::Object exports) { exports.Set("Arena", Arena::Define(env)); }

}  // namespace remus
