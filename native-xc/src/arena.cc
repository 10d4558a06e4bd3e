// arena.cc: guest memory of a simulated domain. The arena is anonymous memory mapped once
// and shared by the threads of this process (the vCPU worker attaches by id); each thread
// sees it as an external ArrayBuffer. Dirty pages are tracked by the kernel, as a
// hypervisor's log-dirty mode would: userfaultfd write-protection in asynchronous mode plus
// the PAGEMAP_SCAN ioctl, which returns the written pages and re-protects them in one call.
// Kernels without it fall back to hashing every page (slow; `dirtyMode` says which).
//
// Re-arming out of the pause. Re-protecting a written page costs the kernel a TLB flush per
// 2 MiB it touches: PAGEMAP_SCAN with re-protection took 5.1 ms for 400 scattered pages of
// 2 GiB here, the same walk without it 0.8 ms. A suspended guest's checkpoint therefore
// collects without re-protecting (collectDirtyDeferred) and re-arms those pages once the guest
// runs again (rearmDeferred). A write that lands between the resume and the re-arm leaves no
// mark in the page table; rearmDeferred finds it by comparing each page, once protected, with
// what the checkpoint captured of it, and marks it `pending`: every collect reports the pending
// pages of its range as written, whatever their page-table entry says. The invariant (collects
// and re-arms on the owner's thread only): a page whose bytes differ from what it was last
// reported with is written in its page-table entry, pending, or unarmed (then written too).
//
// Size limits. The mapping may be up to 64 GiB. JavaScript sees it through external
// ArrayBuffers — `buffer` over the whole arena, `view(firstPage, pages)` over a window — and
// Node.js refuses external buffers longer than node::Buffer::kMaxLength (v8::TypedArray::
// kMaxLength: 2^32 bytes on 64-bit Node 20), so larger guests are seen through windows
// (dom0/memory/guest-memory.ts cuts them in 1 GiB segments). Each buffer is checked against
// that limit (exported as arenaBufferBytesMax): ERR_OUT_OF_MEMORY past it. The check
// never leaves the refusal to Node: on Node 20, napi_create_external_arraybuffer runs the
// finalizer itself when it refuses a length and then reports failure, so a caller that also
// frees its finalizer data on failure (node-addon-api's ArrayBuffer::New does) frees it
// twice. The raw call below knows whether its finalizer ran. Allocations that grow with the
// guest (the mapping, the hash table of the fallback mode, the dirty bitmaps) fail as
// ERR_OUT_OF_MEMORY too.
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "errors.h"
#include "page_codec.h"
#include "uffd_wp.h"

namespace remus {
namespace {

// Guest memory asks for 2 MiB pages ({hugePages: true}) where the kernel can (as a hypervisor
// backs a guest with superpages): a first copy into a replica then takes one fault per 2 MiB
// instead of one per 4 KiB page — on a virtualised dom0 a 4 KiB first touch measured ~11 us, a
// 2 MiB one ~0.1 ms (docs/scale.md). The price: memory is resident 2 MiB at a time, and on this
// kernel even reading untouched memory allocates (a ZERO record no longer leaves fresh memory
// unallocated). Dirty tracking stays at 4 KiB: in asynchronous uffd-wp mode the kernel splits a
// write-protected huge page on its first write, and khugepaged never merges write-protected
// pages. Best effort: with THP off ("never") the mapping keeps 4 KiB pages.
void PreferHugePages(void* p, size_t size) {
#ifdef MADV_HUGEPAGE
  (void)madvise(p, size, MADV_HUGEPAGE);
#endif
}

// The longest external ArrayBuffer this addon asks Node.js for (see the header comment).
constexpr uint64_t kBufferBytesMax = uint64_t{1} << 32;

// A bit per page of the arena (calloc'd: this addon builds without exceptions).
class PageBits {
 public:
  ~PageBits() { std::free(words_); }
  bool Allocate(size_t pages) {
    pages_ = pages;
    words_ = static_cast<uint64_t*>(std::calloc((pages + 63) / 64, sizeof(uint64_t)));
    return words_ != nullptr;
  }
  void Set(size_t first, size_t end) { Apply(first, end, true); }
  void Clear(size_t first, size_t end) { Apply(first, end, false); }
  // Calls f(page) for each set page of [first, end), ascending, and clears the range.
  template <class F>
  void Drain(size_t first, size_t end, F f) {
    for (size_t p = first; p < end;) {
      const size_t w = p >> 6, stop = std::min(end, (w + 1) * 64);
      const uint64_t mask = RangeMask(p & 63, stop - w * 64);
      for (uint64_t x = words_[w] & mask; x != 0; x &= x - 1) f(w * 64 + static_cast<size_t>(__builtin_ctzll(x)));
      words_[w] &= ~mask;
      p = stop;
    }
  }
  // The first page at or after `from` whose bit is `value`; pages_ when there is none.
  size_t Next(size_t from, bool value) const {
    for (size_t p = from; p < pages_;) {
      const size_t w = p >> 6;
      const uint64_t x = (value ? words_[w] : ~words_[w]) & RangeMask(p & 63, 64);
      if (x != 0) return std::min(pages_, w * 64 + static_cast<size_t>(__builtin_ctzll(x)));
      p = (w + 1) * 64;
    }
    return pages_;
  }

 private:
  static uint64_t RangeMask(size_t lo, size_t hi) {  // bits [lo, hi) of a word, 0 <= lo < hi <= 64
    const uint64_t upTo = hi == 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1;
    return upTo & ~((uint64_t{1} << lo) - 1);
  }
  void Apply(size_t first, size_t end, bool value) {
    for (size_t p = first; p < end;) {
      const size_t w = p >> 6, stop = std::min(end, (w + 1) * 64);
      const uint64_t mask = RangeMask(p & 63, stop - w * 64);
      words_[w] = value ? words_[w] | mask : words_[w] & ~mask;
      p = stop;
    }
  }
  uint64_t* words_ = nullptr;
  size_t pages_ = 0;
};

struct Region {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  int uffd = -1;
  int pagemap = -1;
  bool tracking = false;
  uint64_t* hashes = nullptr;  // fallback mode: last seen hash per page (calloc'd)
  // uffd mode. pending: pages every collect over them reports, written in their page-table
  // entry or not (rearmDeferred sets those written between their collect and its ioctl; a
  // walk marks what it finds here before a collect drains its range). unarmed: pages a
  // deferred collect reported and left writable; a re-arming collect over them or
  // rearmDeferred clears them.
  PageBits pending, unarmed;
  ~Region() {
    std::free(hashes);
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
  const size_t pages = r.bytes / kPageSize;  // the bitmaps: 2 MiB each at 64 GiB
  if (!r.pending.Allocate(pages) || !r.unarmed.Allocate(pages)) return "cannot allocate the dirty bitmaps";
  return "";
}

// Marks the pages of [first, end) written in their page-table entries in `pending` (and, when
// deferred, in `unarmed`); unless deferred the walk re-protects them. False on failure.
// A walk of the whole arena is O(pages) in the kernel (0.35 ms per GiB here where every 2 MiB
// is split, far less where none is; several times that when it re-protects many pages), so a
// caller that may not stall walks it a range per turn.
bool ScanWritten(Region& r, size_t first, size_t end, bool deferred, std::string* why) {
  constexpr size_t kVec = 512;
  page_region vec[kVec];
  const uint64_t base = reinterpret_cast<uint64_t>(r.base);
  uint64_t start = base + first * kPageSize, stop = base + end * kPageSize;
  while (start < stop) {
    pm_scan_arg arg{};
    arg.size = sizeof arg;
    arg.flags = (deferred ? 0 : PM_SCAN_WP_MATCHING) | PM_SCAN_CHECK_WPASYNC;
    arg.start = start;
    arg.end = stop;
    arg.vec = reinterpret_cast<uint64_t>(vec);
    arg.vec_len = kVec;
    arg.category_mask = arg.return_mask = PAGE_IS_WRITTEN;
    long got = ioctl(r.pagemap, PAGEMAP_SCAN, &arg);
    if (got < 0) {
      *why = std::string("PAGEMAP_SCAN: ") + std::strerror(errno);
      return false;
    }
    for (long i = 0; i < got; i++) {
      const size_t a = (vec[i].start - base) / kPageSize, b = (vec[i].end - base) / kPageSize;
      r.pending.Set(a, b);
      if (deferred) r.unarmed.Set(a, b);
    }
    if (arg.walk_end <= start) break;
    start = arg.walk_end;  // the walk stops early when vec fills: go on from there
  }
  // Every written page of the range is protected again now: nothing of it waits for a re-arm.
  if (!deferred) r.unarmed.Clear(first, end);
  return true;
}

// The pages of [first, end) written since they were last reported, into out (at most cap);
// -1 on failure (why says it). The count never exceeds the range's pages.
long CollectWritten(Region& r, size_t first, size_t end, bool deferred, uint32_t* out, size_t cap,
                    std::string* why) {
  if (!ScanWritten(r, first, end, deferred, why)) return -1;
  if (cap < end - first) {
    *why = "dirty page list shorter than the range";
    return -1;
  }
  size_t n = 0;
  r.pending.Drain(first, end, [&](size_t p) { out[n++] = static_cast<uint32_t>(p); });
  return static_cast<long>(n);
}

// What a checkpoint captured of the pages it collected: pfns ascending, page i at pages + i * 4 KiB.
struct Captured {
  const uint32_t* pfns = nullptr;
  size_t count = 0;
  const uint8_t* pages = nullptr;
  // True when pfn was captured with the bytes it holds now (read after its re-protection).
  bool HoldsNow(const Region& r, size_t pfn) const {
    const uint32_t* end = pfns + count;
    const uint32_t* at = std::lower_bound(pfns, end, static_cast<uint32_t>(pfn));
    if (at == end || *at != pfn) return false;
    return std::memcmp(pages + static_cast<size_t>(at - pfns) * kPageSize, r.base + pfn * kPageSize, kPageSize) == 0;
  }
};

// Re-protects the pages deferred collects left writable, a run of them per ioctl. A write
// between the collect and the ioctl left no mark, so each page is then compared with what the
// checkpoint captured of it: one that differs, or was not captured, is marked pending. (A
// write after the ioctl is marked by the kernel; one before it that left the bytes as captured
// changed nothing the backup lacks.) Pages re-armed, or -1 (why says it; a failed run is
// marked pending whole).
long RearmDeferred(Region& r, const Captured& cap, std::string* why) {
  const size_t pages = r.bytes / kPageSize;
  long done = 0;
  for (size_t first = r.unarmed.Next(0, true); first < pages;) {
    const size_t end = r.unarmed.Next(first, false);
    uffdio_writeprotect wp{};
    wp.range.start = reinterpret_cast<uint64_t>(r.base) + first * kPageSize;
    wp.range.len = (end - first) * kPageSize;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    const bool failed = ioctl(r.uffd, UFFDIO_WRITEPROTECT, &wp) != 0;
    if (failed) {
      *why = std::string("UFFDIO_WRITEPROTECT: ") + std::strerror(errno);
      r.pending.Set(first, end);
      return -1;
    }
    for (size_t p = first; p < end; p++)
      if (!cap.HoldsNow(r, p)) r.pending.Set(p, p + 1);
    r.unarmed.Clear(first, end);
    done += static_cast<long>(end - first);
    first = r.unarmed.Next(end, true);
  }
  return done;
}

long HashWritten(Region& r, size_t first, size_t end, uint32_t* out, size_t cap) {
  size_t n = 0;
  for (size_t p = first; p < end; p++) {
    uint64_t h = HashPage(r.base + p * kPageSize);
    if (h != r.hashes[p]) {
      r.hashes[p] = h;
      if (n < cap) out[n] = static_cast<uint32_t>(p);
      n++;
    }
  }
  return n > cap ? -1 : static_cast<long>(n);
}

// Bytes of the region backed by pages of its own, from /proc/self/pagemap: an entry counts
// when present (bit 63), mapped once (bit 56) and anonymous (bit 61 clear). The kernel's zero
// page, mapped where untouched memory was only read, has no mapcount and so never counts, nor
// does the huge zero page (reported as a file page). Unlike the process's RSS this sees only
// the arena, whatever the heap does meanwhile. -1 when pagemap cannot be read.
int64_t ResidentBytes(const Region& r) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  constexpr size_t kChunk = 4096;  // entries per read (32 KiB)
  static thread_local uint64_t entries[kChunk];
  const uint64_t firstPage = reinterpret_cast<uint64_t>(r.base) / kPageSize;
  const size_t pages = r.bytes / kPageSize;
  int64_t resident = 0;
  for (size_t at = 0; at < pages; at += kChunk) {
    const size_t n = std::min(kChunk, pages - at);
    const ssize_t got = pread(fd, entries, n * 8, static_cast<off_t>((firstPage + at) * 8));
    if (got != static_cast<ssize_t>(n * 8)) {
      close(fd);
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      const uint64_t e = entries[i];
      if ((e >> 63 & 1) && (e >> 56 & 1) && !(e >> 61 & 1)) resident += kPageSize;
    }
  }
  close(fd);
  return resident;
}

class Arena : public Napi::ObjectWrap<Arena> {
 public:
  ~Arena() override {
    // Collected without close(): an arena this object created leaves the registry (the
    // memory goes once no ArrayBuffer and no attached worker holds it).
    if (owner_) {
      std::lock_guard<std::mutex> lock(registryMutex);
      registry.erase(id_);
    }
  }

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Arena",
                       {InstanceMethod("startDirtyTracking", &Arena::StartDirty),
                        InstanceMethod("collectDirty", &Arena::CollectDirty),
                        InstanceMethod("collectDirtyDeferred", &Arena::CollectDirtyDeferred),
                        InstanceMethod("rearmDeferred", &Arena::Rearm),
                        InstanceMethod("copyPages", &Arena::CopyPages),
                        InstanceMethod("view", &Arena::View),
                        InstanceMethod("residentBytes", &Arena::Resident),
                        InstanceMethod("close", &Arena::Close),
                        InstanceAccessor("id", &Arena::Id, nullptr),
                        InstanceAccessor("buffer", &Arena::Buffer, nullptr),
                        InstanceAccessor("pageCount", &Arena::PageCount, nullptr),
                        InstanceAccessor("dirtyMode", &Arena::DirtyMode, nullptr)});
  }

  // new Arena(bytes[, {hugePages}]) creates; new Arena(0, id) attaches to an existing arena (worker).
  explicit Arena(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Arena>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      ThrowType(env, "new Arena(bytes[, {hugePages}]) or new Arena(0, id)");
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
    const size_t size = static_cast<size_t>(bytes);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ThrowRemus(env, ErrCode::kOutOfMemory,
                 "cannot map " + std::to_string(size) + " bytes of guest memory: " + std::strerror(err));
      return;
    }
    if (info.Length() >= 2 && info[1].IsObject() &&
        info[1].As<Napi::Object>().Get("hugePages").ToBoolean().Value()) {
      PreferHugePages(p, size);
    }
    Region* raw = new (std::nothrow) Region();
    if (raw == nullptr) {
      munmap(p, size);
      ThrowRemus(env, ErrCode::kOutOfMemory, "cannot allocate the arena's bookkeeping");
      return;
    }
    raw->base = static_cast<uint8_t*>(p);
    raw->bytes = size;
    std::shared_ptr<Region> r(raw);
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
  // residentBytes() -> bytes of the arena backed by its own pages (ResidentBytes); O(pages).
  Napi::Value Resident(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    const int64_t bytes = ResidentBytes(*region_);
    if (bytes < 0) return ThrowRemus(env, ErrCode::kIo, "cannot read /proc/self/pagemap"), env.Undefined();
    return Napi::Number::New(env, static_cast<double>(bytes));
  }
  Napi::Value Id(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), id_); }
  Napi::Value PageCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), region_ ? static_cast<double>(region_->bytes / kPageSize) : 0);
  }
  Napi::Value DirtyMode(const Napi::CallbackInfo& info) {
    const char* m = !region_ || !region_->tracking ? "off" : region_->uffd >= 0 && region_->pagemap >= 0 ? "uffd-wp" : "hash";
    return Napi::String::New(info.Env(), m);
  }
  // What an external ArrayBuffer of the region holds: the region outlives the buffer. While
  // the buffer is being created, `ranEarly` points at the creator's flag (see Buffer).
  struct BufferRef {
    std::shared_ptr<Region> region;
    bool* ranEarly;
  };
  static void FinalizeBufferRef(napi_env, void*, void* hint) {
    auto* ref = static_cast<BufferRef*>(hint);
    if (ref->ranEarly != nullptr) *ref->ranEarly = true;
    delete ref;
  }
  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    return Window(env, 0, region_->bytes);
  }
  // view(firstPage, pages) -> an ArrayBuffer over that window of the arena (at most 2^32
  // bytes): guests larger than one buffer are seen through several windows.
  Napi::Value View(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber())
      return ThrowType(env, "view(firstPage: number, pages: number)"), env.Undefined();
    double first = info[0].As<Napi::Number>().DoubleValue(), pages = info[1].As<Napi::Number>().DoubleValue();
    double total = static_cast<double>(region_->bytes / kPageSize);
    if (!(first >= 0 && pages >= 1 && first == std::floor(first) && pages == std::floor(pages) && first + pages <= total))
      return ThrowRange(env, "view: the window is not whole pages inside the arena"), env.Undefined();
    return Window(env, static_cast<size_t>(first) * kPageSize, static_cast<size_t>(pages) * kPageSize);
  }
  Napi::Value Window(Napi::Env env, size_t offset, size_t bytes) {
    const std::string what = std::to_string(bytes) + " bytes of guest memory";
    if (bytes > kBufferBytesMax) {
      ThrowRemus(env, ErrCode::kOutOfMemory, what + " cannot be one ArrayBuffer: Node.js allows at most " +
                                               std::to_string(kBufferBytesMax) + " bytes (2^32) per buffer");
      return env.Undefined();
    }
    bool ranEarly = false;
    auto* ref = new (std::nothrow) BufferRef{region_, &ranEarly};
    if (ref == nullptr) {
      ThrowRemus(env, ErrCode::kOutOfMemory, "cannot allocate the finalizer of an arena buffer");
      return env.Undefined();
    }
    napi_value ab = nullptr;
    // V8 counts an external buffer's bytes as memory a collection may free, and past a limit
    // runs a full, memory-reducing one: a guest's views of 8 GiB cost four, 21–46 ms each, on
    // the backup's loop at a HELLO (docs/scale.md). No collection frees the arena (the Region
    // outlives every view), so its views are taken out of that count before V8 adds them.
    int64_t counted = 0;
    napi_adjust_external_memory(env, -static_cast<int64_t>(bytes), &counted);
    napi_status st = napi_create_external_arraybuffer(env, region_->base + offset, bytes, FinalizeBufferRef, ref, &ab);
    if (st != napi_ok) napi_adjust_external_memory(env, static_cast<int64_t>(bytes), &counted);
    if (st != napi_ok) {
      // Node may have run the finalizer already (it does when it refuses the length): then
      // `ref` is gone. Otherwise it is still ours.
      if (!ranEarly) delete ref;
      std::string why = "status " + std::to_string(static_cast<int>(st));
      if (env.IsExceptionPending()) {
        Napi::Error e = env.GetAndClearPendingException();
        why = e.Message();
      }
      ThrowRemus(env, ErrCode::kOutOfMemory, "cannot make " + what + " an ArrayBuffer: " + why);
      return env.Undefined();
    }
    ref->ranEarly = nullptr;  // alive while `ab` is: the finalizer runs only after this call
    return Napi::ArrayBuffer(env, ab);
  }
  // startDirtyTracking() -> mode: "uffd-wp" or "hash" (with the reason uffd failed)
  Napi::Value StartDirty(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    Region& r = *region_;
    Napi::Object res = Napi::Object::New(env);
    if (r.tracking) return ThrowType(env, "dirty tracking already started"), env.Undefined();
    std::string why = StartTracking(r);
    if (!why.empty()) {
      if (r.uffd >= 0) close(r.uffd), r.uffd = -1;
      if (r.pagemap >= 0) close(r.pagemap), r.pagemap = -1;
      size_t pages = r.bytes / kPageSize;
      r.hashes = static_cast<uint64_t*>(std::calloc(pages, sizeof(uint64_t)));
      if (r.hashes == nullptr) {
        ThrowRemus(env, ErrCode::kOutOfMemory, "cannot allocate " + std::to_string(pages * sizeof(uint64_t)) +
                                                 " bytes of page hashes (kernel dirty tracking failed: " + why + ")");
        return env.Undefined();
      }
      for (size_t p = 0; p < pages; p++) r.hashes[p] = HashPage(r.base + p * kPageSize);
    }
    r.tracking = true;
    res.Set("mode", why.empty() ? "uffd-wp" : "hash");
    res.Set("reason", why);
    return res;
  }
  // collectDirty(out: Uint32Array[, firstPfn, endPfn]) -> count of pages (of the range) written
  // since they were last reported; re-arms them. collectDirtyDeferred (same arguments) leaves
  // them writable for rearmDeferred() to re-arm later (the header says why).
  Napi::Value CollectDirty(const Napi::CallbackInfo& info) { return Collect(info, false); }
  Napi::Value CollectDirtyDeferred(const Napi::CallbackInfo& info) { return Collect(info, true); }
  Napi::Value Collect(const Napi::CallbackInfo& info, bool deferred) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    const char* usage = deferred ? "collectDirtyDeferred(out: Uint32Array[, firstPfn, endPfn])"
                                 : "collectDirty(out: Uint32Array[, firstPfn, endPfn])";
    if ((info.Length() != 1 && info.Length() != 3) || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
      return ThrowType(env, usage), env.Undefined();
    if (!region_->tracking) return ThrowType(env, "collectDirty: tracking not started"), env.Undefined();
    auto out = info[0].As<Napi::Uint32Array>();
    const size_t pages = region_->bytes / kPageSize;
    size_t first = 0, end = pages;
    if (info.Length() == 3) {
      if (!info[1].IsNumber() || !info[2].IsNumber()) return ThrowType(env, usage), env.Undefined();
      const double f = info[1].As<Napi::Number>().DoubleValue(), e = info[2].As<Napi::Number>().DoubleValue();
      if (!(f >= 0 && f <= e && e <= static_cast<double>(pages)) || f != static_cast<double>(static_cast<size_t>(f)) ||
          e != static_cast<double>(static_cast<size_t>(e)))
        return ThrowRange(env, "collectDirty: need integers 0 <= firstPfn <= endPfn <= pageCount"), env.Undefined();
      first = static_cast<size_t>(f);
      end = static_cast<size_t>(e);
    }
    std::string why;
    long n = region_->uffd >= 0
                 ? CollectWritten(*region_, first, end, deferred, out.Data(), out.ElementLength(), &why)
                 : HashWritten(*region_, first, end, out.Data(), out.ElementLength());
    if (n < 0) {
      ThrowRemus(env, ErrCode::kDirtyTracking, "dirty tracking failed: " + (why.empty() ? std::string("list overflow") : why));
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(n));
  }
  // rearmDeferred([pfns: Uint32Array, count, pages: Uint8Array]) -> pages re-armed (0 in hash
  // mode, where nothing is deferred). pfns (ascending) and pages: what the checkpoint captured.
  Napi::Value Rearm(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    const char* usage = "rearmDeferred([pfns: Uint32Array, count, pages: Uint8Array])";
    Captured cap;
    if (info.Length() != 0) {
      if (info.Length() != 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
          info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
          info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        return ThrowType(env, usage), env.Undefined();
      auto pfns = info[0].As<Napi::Uint32Array>();
      auto bytes = info[2].As<Napi::Uint8Array>();
      cap.count = info[1].As<Napi::Number>().Uint32Value();
      if (cap.count > pfns.ElementLength() || bytes.ByteLength() < cap.count * kPageSize)
        return ThrowRange(env, "rearmDeferred: count exceeds pfns or pages"), env.Undefined();
      cap.pfns = pfns.Data();
      cap.pages = bytes.Data();
      for (size_t i = 1; i < cap.count; i++)
        if (cap.pfns[i] <= cap.pfns[i - 1])
          return ThrowRange(env, "rearmDeferred: pfns not ascending"), env.Undefined();
    }
    if (!region_->tracking || region_->uffd < 0) return Napi::Number::New(env, 0);
    std::string why;
    const long n = RearmDeferred(*region_, cap, &why);
    if (n < 0) return ThrowRemus(env, ErrCode::kDirtyTracking, "dirty tracking failed: " + why), env.Undefined();
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
  // close(): the creator's call gives the guest's memory back now (the mapping itself goes when
  // the last view is collected, and V8 is not pressed to collect them: see Window). A view
  // that outlives it reads zeros. Called once nothing runs on the arena (an attached vCPU has
  // exited). Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (owner_ && region_) {
      std::lock_guard<std::mutex> lock(registryMutex);
      registry.erase(id_);
      (void)madvise(region_->base, region_->bytes, MADV_DONTNEED);
    }
    region_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<Region> region_;
  uint32_t id_ = 0;
  bool owner_ = false;
};

}  // namespace

void InitArena(Napi::Env env, Napi::Object exports) {
  exports.Set("Arena", Arena::Define(env));
  exports.Set("arenaBufferBytesMax", Napi::Number::New(env, static_cast<double>(kBufferBytesMax)));
}

}  // namespace remus
