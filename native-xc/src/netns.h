// netns.h: runs a step of setup inside another network namespace (a socket, a tc hook:
// whatever is created there stays there) and returns this thread to its own, for every part
// that takes a `netnsPath` (nfqueue_driver.cc, bpf_classifier.cc).
#pragma once
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace remus {

// Runs fn (returning "" or why it failed) inside the namespace at path, or here when path is
// empty. Returns fn's answer, or why the namespace could not be entered.
template <typename Fn>
std::string InNetns(const std::string& path, Fn fn) {
  if (path.empty()) return fn();
  int orig = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (orig < 0 || target < 0 || setns(target, CLONE_NEWNET) != 0) {
    std::string why = "enter network namespace " + path + ": " + std::strerror(errno);
    if (orig >= 0) close(orig);
    if (target >= 0) close(target);
    return why;
  }
  std::string why = fn();
  if (setns(orig, CLONE_NEWNET) != 0) abort();  // this thread must not stay in the other namespace
  close(orig);
  close(target);
  return why;
}

}  // namespace remus
