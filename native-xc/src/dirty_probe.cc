// dirty_probe.cc: does this kernel track dirty pages the way a hypervisor's log-dirty mode
// does? Checks userfaultfd async write-protect plus PAGEMAP_SCAN end to end on a small
// private region: protect, write two pages, scan-and-reprotect, expect exactly those two.
// The simulated domain's dirty tracker (engine issue) is built on the same calls.
#include <fcntl.h>
#include <napi.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "uffd_wp.h"

namespace remus {
namespace {

constexpr size_t kProbePages = 16;

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// Returns "" when dirty tracking works, else the reason it does not.
std::string Probe() {
  long page = sysconf(_SC_PAGESIZE);
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) return Errno("userfaultfd");
  std::string why;
  size_t len = kProbePages * static_cast<size_t>(page);
  void* mem = MAP_FAILED;
  int pm = -1;
  do {
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    if (ioctl(uffd, UFFDIO_API, &api) != 0) { why = Errno("UFFDIO_API with WP_ASYNC"); break; }
    mem = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { why = Errno("mmap"); break; }
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(mem);
    reg.range.len = len;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) { why = Errno("UFFDIO_REGISTER (WP)"); break; }
    uffdio_writeprotect wp{};
    wp.range = reg.range;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) { why = Errno("UFFDIO_WRITEPROTECT"); break; }
    static_cast<char*>(mem)[3 * page] = 1;
    static_cast<char*>(mem)[9 * page + 7] = 1;
    pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) { why = Errno("open /proc/self/pagemap"); break; }
    page_region regions[kProbePages];
    pm_scan_arg arg{};
    arg.size = sizeof arg;
    arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    arg.start = reinterpret_cast<uint64_t>(mem);
    arg.end = arg.start + len;
    arg.vec = reinterpret_cast<uint64_t>(regions);
    arg.vec_len = kProbePages;
    arg.category_mask = arg.return_mask = PAGE_IS_WRITTEN;
    long n = ioctl(pm, PAGEMAP_SCAN, &arg);
    if (n < 0) { why = Errno("PAGEMAP_SCAN"); break; }
    size_t dirty = 0;
    bool exact = true;
    for (long i = 0; i < n; i++) {
      size_t first = (regions[i].start - arg.start) / page, last = (regions[i].end - arg.start) / page;
      for (size_t p = first; p < last; p++, dirty++) exact = exact && (p == 3 || p == 9);
    }
    if (dirty != 2 || !exact) why = "PAGEMAP_SCAN reported a different dirty set than was written";
  } while (false);
  if (pm >= 0) close(pm);
  if (mem != MAP_FAILED) munmap(mem, len);
  close(uffd);
  return why;
}

// dirtyProbe() -> { ok, errno, message }
Napi::Value DirtyProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  errno = 0;
  std::string why = Probe();
  Napi::Object r = Napi::Object::New(env);
  r.Set("ok", why.empty());
  r.Set("errno", why.empty() ? 0 : errno);
  r.Set("message", why.empty() ? "userfaultfd WP_ASYNC + PAGEMAP_SCAN track writes exactly" : why);
  return r;
}

}  // namespace

void InitDirtyProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("dirtyProbe", Napi::Function::New(env, DirtyProbe));
}

}  // namespace remus
