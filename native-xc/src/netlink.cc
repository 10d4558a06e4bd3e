// netlink.cc: one synchronous rtnetlink request and its acknowledgement — what the `plug`
// output buffer needs to drive Linux sch_plug (TCQ_PLUG_BUFFER / RELEASE_ONE) twice per
// checkpoint without spawning tc. The message is built and checked in TypeScript
// (dom0/net/rtnetlink.ts); here we only stamp the sequence number, send it to the kernel
// and wait (bounded) for the NLMSG_ERROR that acknowledges it. Returns 0 or -errno.
#include <errno.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "errors.h"

namespace remus {
namespace {

constexpr size_t kRequestMax = 64 * 1024;
constexpr int kAckTimeoutMs = 2000;

struct Fd {
  int fd;
  ~Fd() { if (fd >= 0) close(fd); }
};

Napi::Value NetlinkRoute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(env, "netlinkRoute(message: Uint8Array)");
    return env.Undefined();
  }
  Napi::Uint8Array req = info[0].As<Napi::Uint8Array>();
  if (req.ByteLength() < sizeof(nlmsghdr) || req.ByteLength() > kRequestMax) {
    ThrowRange(env, "netlink message size out of range");
    return env.Undefined();
  }
  std::string msg(reinterpret_cast<const char*>(req.Data()), req.ByteLength());
  auto* hdr = reinterpret_cast<nlmsghdr*>(&msg[0]);
  if (hdr->nlmsg_len != msg.size() || (hdr->nlmsg_flags & NLM_F_ACK) == 0) {
    ThrowRange(env, "netlink message length field or NLM_F_ACK flag wrong");
    return env.Undefined();
  }
  static uint32_t seq = 1;
  hdr->nlmsg_seq = ++seq;

  Fd s{socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)};
  if (s.fd < 0) {
    ThrowRemus(env, ErrCode::kNetbuf, std::string("cannot open a NETLINK_ROUTE socket: ") + strerror(errno));
    return env.Undefined();
  }
  timeval tv{kAckTimeoutMs / 1000, (kAckTimeoutMs % 1000) * 1000};
  setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(s.fd, msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    return Napi::Number::New(env, -errno);
  }
  alignas(nlmsghdr) char buf[16384];
  for (;;) {
    ssize_t n = recv(s.fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      ThrowRemus(env, ErrCode::kNetbuf, std::string("no netlink acknowledgement: ") + strerror(errno));
      return env.Undefined();
    }
    int left = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != seq || h->nlmsg_type != NLMSG_ERROR) continue;
      if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) {
        ThrowRemus(env, ErrCode::kNetbuf, "truncated netlink acknowledgement");
        return env.Undefined();
      }
      return Napi::Number::New(env, reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error);
    }
  }
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkRoute", Napi::Function::New(env, NetlinkRoute));
}

}  // namespace remus
