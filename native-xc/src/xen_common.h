// xen_common.h: what the Xen part's files share — the Xen headers (which lack extern "C"
// for C++ callers: without the wrapper the addon asks for C++-mangled names and fails at
// the first call) and a logger that drops libxc's own messages (errors reach TypeScript
// through errno and RemusError messages, not as stray lines on stderr).
#pragma once
#include <cstdarg>

extern "C" {
#include <libxl.h>
#include <libxl_utils.h>
#include <xenctrl.h>
#include <xenguest.h>
#include <xenstore.h>
#include <xentoollog.h>
}

namespace remus {

inline void QuietMessage(xentoollog_logger*, xentoollog_level, int, const char*, const char*, va_list) {}
inline void QuietProgress(xentoollog_logger*, const char*, const char*, int, unsigned long, unsigned long) {}
inline void QuietDestroy(xentoollog_logger*) {}

inline xentoollog_logger* QuietLogger() {
  static xentoollog_logger quiet = {QuietMessage, QuietProgress, QuietDestroy};
  return &quiet;
}

}  // namespace remus
