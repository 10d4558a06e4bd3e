// nfqueue_driver.cc: the kernel side of the nfqueue network output buffer
// (docs/netbuffer.md). Guest packets are diverted by `-j NFQUEUE --queue-num Q` into a
// netfilter queue; the kernel keeps each packet until this process issues a verdict, so a
// packet we hold is a packet whose verdict we have not issued yet — and if this process
// dies, the kernel destroys the queue and drops what it held (never leaks it).
//
// Sequence: nfq_open, nfq_create_queue(Q), NFQNL_COPY_PACKET with copyBytes, queue maxlen,
// NFQA_CFG_F_GSO, SO_RCVBUFFORCE + NETLINK_NO_ENOBUFS, O_NONBLOCK; a uv_poll on the
// netlink fd reads packets with recvmmsg and hands them to JavaScript in batches (ids, IP
// lengths, hw protocols, skb marks, header copies in shared typed arrays); verdicts come back in
// batches: nfq_set_verdict_batch(maxId) for an epoch, or many NFQNL_MSG_VERDICT messages
// packed into one sendto. Thin layer: all holding/ordering rules live in TypeScript.
#include <arpa/inet.h>
#include <fcntl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <napi.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "netns.h"

namespace remus {
namespace {

// The kernel's ceiling for the copy range is NFQNL_MAX_COPY_RANGE (0xffff - NLA_HDRLEN).
constexpr uint32_t kCopyBytesMin = 64, kCopyBytesMax = 65531;
constexpr uint32_t kBatchMin = 1, kBatchMax = 65536;
constexpr uint32_t kZeroBytes = 128;              // header bytes zero-padded past the copy
constexpr uint32_t kQueueMaxLenMax = 4u << 20;
constexpr uint32_t kRcvbufMax = 1u << 30;
constexpr int kRecvSlots = 64;             // datagrams per recvmmsg
constexpr size_t kRecvSlotOverhead = 1024; // netlink + nfqueue attributes around the copied bytes
constexpr int kPollBatchesMax = 8;         // per uv_poll wakeup, then yield to the loop
constexpr size_t kVerdictMsgBytes = NLMSG_ALIGN(sizeof(nlmsghdr)) + NLMSG_ALIGN(sizeof(nfgenmsg)) +
                                    NLA_ALIGN(NLA_HDRLEN + sizeof(nfqnl_msg_verdict_hdr));
constexpr size_t kVerdictSendBytes = 64 * 1024;

class NfqueueQueue : public Napi::ObjectWrap<NfqueueQueue> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NfqueueQueue",
                       {InstanceMethod("drain", &NfqueueQueue::Drain),
                        InstanceMethod("verdictUpTo", &NfqueueQueue::VerdictUpTo),
                        InstanceMethod("verdictEach", &NfqueueQueue::VerdictEach),
                        InstanceMethod("stats", &NfqueueQueue::Stats),
                        InstanceMethod("close", &NfqueueQueue::Close)});
  }

  explicit NfqueueQueue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NfqueueQueue>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 2 || !info[0].IsObject() || !info[1].IsFunction()) {
      ThrowType(env, "new NfqueueQueue({queueNum, copyBytes, queueMaxLen, rcvbufBytes, batchMax, netnsPath?}, onBatch)");
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    if (!ReadU32(o, "queueNum", 0, 65535, &queueNum_) || !ReadU32(o, "copyBytes", kCopyBytesMin, kCopyBytesMax, &copyBytes_) ||
        !ReadU32(o, "queueMaxLen", 1, kQueueMaxLenMax, &queueMaxLen_) ||
        !ReadU32(o, "rcvbufBytes", 65536, kRcvbufMax, &rcvbufBytes_) ||
        !ReadU32(o, "batchMax", kBatchMin, kBatchMax, &batchMax_)) {
      ThrowRange(env, "NfqueueQueue options: queueNum 0..65535, copyBytes 64..65531, queueMaxLen 1..4Mi, "
                      "rcvbufBytes 64Ki..1Gi, batchMax 1..65536 (integers)");
      return;
    }
    std::string netns;
    if (o.Has("netnsPath") && !o.Get("netnsPath").IsUndefined()) {
      if (!o.Get("netnsPath").IsString()) { ThrowType(env, "netnsPath must be a string"); return; }
      netns = o.Get("netnsPath").As<Napi::String>().Utf8Value();
    }
    std::string why = Open(netns);
    if (!why.empty()) {
      CloseQueue();
      ThrowRemus(env, ErrCode::kNetbuf, "cannot bind netfilter queue " + std::to_string(queueNum_) + ": " + why);
      return;
    }
    ids_ = Napi::Persistent(Napi::Uint32Array::New(env, batchMax_));
    ipLens_ = Napi::Persistent(Napi::Uint32Array::New(env, batchMax_));
    marks_ = Napi::Persistent(Napi::Uint32Array::New(env, batchMax_));
    protos_ = Napi::Persistent(Napi::Uint16Array::New(env, batchMax_));
    capLens_ = Napi::Persistent(Napi::Uint16Array::New(env, batchMax_));
    headers_ = Napi::Persistent(Napi::Buffer<uint8_t>::New(env, size_t(batchMax_) * copyBytes_));
    onBatch_ = Napi::Persistent(info[1].As<Napi::Function>());
    Napi::Object self = info.This().As<Napi::Object>();
    self.Set("ids", ids_.Value());
    self.Set("ipLens", ipLens_.Value());
    self.Set("marks", marks_.Value());
    self.Set("protos", protos_.Value());
    self.Set("capLens", capLens_.Value());
    self.Set("headers", headers_.Value());
    self.Set("copyBytes", copyBytes_);
    self.Set("batchMax", batchMax_);
    asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "remusdb.nfqueue");
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    uv_poll_init(loop, poll_, fd_);
    poll_->data = this;
    uv_poll_start(poll_, UV_READABLE, &NfqueueQueue::OnReadable);
    Ref();  // kept alive while the poll is open; Close() unrefs
  }

  ~NfqueueQueue() override { CloseQueue(); }

 private:
  static bool ReadU32(Napi::Object o, const char* key, uint32_t min, uint32_t max, uint32_t* out) {
    Napi::Value v = o.Get(key);
    if (!v.IsNumber()) return false;
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<uint32_t>(d))) return false;
    *out = static_cast<uint32_t>(d);
    return true;
  }

  static std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

  // Creates the netlink socket (inside netnsPath when given) and configures the queue.
  std::string Open(const std::string& netnsPath) {
    std::string why = InNetns(netnsPath, [&] {
      h_ = nfq_open();
      return h_ == nullptr ? Errno("nfq_open") : std::string();
    });
    if (!why.empty()) return why;
    q_ = nfq_create_queue(h_, static_cast<uint16_t>(queueNum_), &NfqueueQueue::OnPacket, this);
    if (q_ == nullptr) return Errno("nfq_create_queue (is another process bound to it?)");
    if (nfq_set_mode(q_, NFQNL_COPY_PACKET, copyBytes_) < 0) return Errno("nfq_set_mode");
    if (nfq_set_queue_maxlen(q_, queueMaxLen_) < 0) return Errno("nfq_set_queue_maxlen");
    if (nfq_set_queue_flags(q_, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0) return Errno("nfq_set_queue_flags(GSO)");
    fd_ = nfq_fd(h_);
    int size = static_cast<int>(rcvbufBytes_);
    if (setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0 &&
        setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) != 0)
      return Errno("SO_RCVBUF");
    int one = 1;
    if (setsockopt(fd_, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one) != 0) return Errno("NETLINK_NO_ENOBUFS");
    int fl = fcntl(fd_, F_GETFL);
    if (fl < 0 || fcntl(fd_, F_SETFL, fl | O_NONBLOCK) != 0) return Errno("O_NONBLOCK");
    recvSlotBytes_ = std::max<size_t>(4096, copyBytes_ + kRecvSlotOverhead);
    recvBuf_.resize(size_t(kRecvSlots) * recvSlotBytes_);
    return "";
  }

  void CloseQueue() {
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (q_ != nullptr) nfq_destroy_queue(q_);  // the kernel drops whatever is still queued
    q_ = nullptr;
    if (h_ != nullptr) nfq_close(h_);
    h_ = nullptr;
    fd_ = -1;
  }

  // libnetfilter_queue callback for one packet message: copy id, lengths and header.
  static int OnPacket(nfq_q_handle*, nfgenmsg*, nfq_data* nfad, void* data) {
    auto* self = static_cast<NfqueueQueue*>(data);
    nfqnl_msg_packet_hdr* ph = nfq_get_msg_packet_hdr(nfad);
    // nfq_destroy_queue() reads the socket while waiting for its ack and hands queued packet
    // messages here too: outside ReadBatch the batch pointers are not ours to write.
    if (!self->reading_ || ph == nullptr || self->count_ >= self->batchMax_) return 0;
    unsigned char* payload = nullptr;
    int len = nfq_get_payload(nfad, &payload);
    if (len < 0) len = 0;
    uint32_t i = self->count_++;
    uint32_t cap = std::min<uint32_t>(static_cast<uint32_t>(len), self->copyBytes_);
    self->idsData_[i] = ntohl(ph->packet_id);
    self->protosData_[i] = ntohs(ph->hw_protocol);
    self->capLensData_[i] = static_cast<uint16_t>(cap);
    self->ipLensData_[i] = IpLength(payload, static_cast<uint32_t>(len));
    self->marksData_[i] = nfq_get_nfmark(nfad);  // the in-kernel classifier's verdict
    uint8_t* dst = self->headersData_ + size_t(i) * self->copyBytes_;
    if (cap > 0) std::memcpy(dst, payload, cap);
    // Zero only the header area (the first 128 bytes); capLens tells the valid length, and
    // clearing a 64 KiB slot per packet would cost more than the copy (pgwire copy ranges).
    if (cap < kZeroBytes && cap < self->copyBytes_) std::memset(dst + cap, 0, std::min(kZeroBytes, self->copyBytes_) - cap);
    self->received_++;
    return 0;
  }

  // Length of the whole IP packet from its header (the copy may be truncated).
  static uint32_t IpLength(const uint8_t* p, uint32_t caplen) {
    if (caplen >= 20 && (p[0] >> 4) == 4) return (uint32_t(p[2]) << 8) | p[3];
    if (caplen >= 40 && (p[0] >> 4) == 6) return 40 + ((uint32_t(p[4]) << 8) | p[5]);
    return caplen;
  }

  // Reads up to one batch (batchMax packets) without blocking. Returns packets read.
  uint32_t ReadBatch() {
    count_ = 0;
    reading_ = true;
    idsData_ = ids_.Value().Data();
    ipLensData_ = ipLens_.Value().Data();
    marksData_ = marks_.Value().Data();
    protosData_ = protos_.Value().Data();
    capLensData_ = capLens_.Value().Data();
    headersData_ = headers_.Value().Data();
    mmsghdr msgs[kRecvSlots];
    iovec iov[kRecvSlots];
    while (count_ < batchMax_ && fd_ >= 0) {
      uint32_t room = std::min<uint32_t>(kRecvSlots, batchMax_ - count_);  // one packet per datagram
      for (uint32_t k = 0; k < room; k++) {
        iov[k] = {recvBuf_.data() + k * recvSlotBytes_, recvSlotBytes_};
        std::memset(&msgs[k], 0, sizeof msgs[k]);
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
      }
      int n = recvmmsg(fd_, msgs, room, MSG_DONTWAIT, nullptr);
      if (n <= 0) {
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          recvErrors_++;
          lastErrno_ = errno;
        }
        break;
      }
      for (int k = 0; k < n; k++) Dispatch(recvBuf_.data() + k * recvSlotBytes_, msgs[k].msg_len);
      if (static_cast<uint32_t>(n) < room) break;
    }
    reading_ = false;
    return count_;
  }

  // One datagram: a netlink error (a verdict for an unknown id, say) is counted; packet
  // messages go through libnetfilter_queue's parser to OnPacket.
  void Dispatch(uint8_t* buf, uint32_t len) {
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf);
    if (len >= sizeof(nlmsghdr) && nlh->nlmsg_type == NLMSG_ERROR) {
      auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(nlh));
      if (len >= NLMSG_LENGTH(sizeof(nlmsgerr)) && err->error != 0) {
        netlinkErrors_++;
        lastErrno_ = -err->error;
      }
      return;
    }
    nfq_handle_packet(h_, reinterpret_cast<char*>(buf), static_cast<int>(len));
  }

  // Reads and delivers batches; returns packets delivered. From the loop or from drain().
  uint32_t Pump(Napi::Env env, int batchesMax, bool fromLoop) {
    uint32_t total = 0;
    for (int b = 0; b < batchesMax && fd_ >= 0; b++) {
      uint32_t n = ReadBatch();
      if (n == 0) break;
      total += n;
      batches_++;
      Napi::Value arg = Napi::Number::New(env, n);
      if (fromLoop) {
        onBatch_.MakeCallback(Value(), {arg}, *asyncContext_);
      } else {
        onBatch_.Call(Value(), {arg});
      }
      if (env.IsExceptionPending()) break;
      if (n < batchMax_) break;
    }
    return total;
  }

  static void OnReadable(uv_poll_t* handle, int status, int) {
    auto* self = static_cast<NfqueueQueue*>(handle->data);
    if (status < 0) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    self->Pump(env, kPollBatchesMax, true);
  }

  bool IsOpen(const Napi::CallbackInfo& info) {
    if (q_ == nullptr) {
      ThrowRemus(info.Env(), ErrCode::kNetbuf, "netfilter queue " + std::to_string(queueNum_) + " is closed");
      return false;
    }
    return true;
  }

  // drain(batchesMax) -> packets delivered through onBatch, synchronously.
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 1 || !info[0].IsNumber()) { ThrowType(env, "drain(batchesMax)"); return env.Undefined(); }
    int batches = info[0].As<Napi::Number>().Int32Value();
    if (batches < 1 || batches > 1 << 20) { ThrowRange(env, "drain: batchesMax 1..1Mi"); return env.Undefined(); }
    if (!IsOpen(info)) return env.Undefined();
    return Napi::Number::New(env, Pump(env, batches, false));
  }

  // verdictUpTo(id, accept): every queued packet with id ≤ id (kernel order) gets the verdict.
  Napi::Value VerdictUpTo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
      ThrowType(env, "verdictUpTo(id, accept)");
      return env.Undefined();
    }
    if (!IsOpen(info)) return env.Undefined();
    uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    uint32_t verdict = info[1].As<Napi::Boolean>().Value() ? NF_ACCEPT : NF_DROP;
    if (nfq_set_verdict_batch(q_, id, verdict) < 0) {
      ThrowRemus(env, ErrCode::kNetbuf, Errno("nfq_set_verdict_batch"));
      return env.Undefined();
    }
    verdictMsgs_++;
    return env.Undefined();
  }

  // verdictEach(ids, count, accept): one verdict per id, packed into few sendto calls.
  Napi::Value VerdictEach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsBoolean() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
      ThrowType(env, "verdictEach(ids: Uint32Array, count, accept)");
      return env.Undefined();
    }
    Napi::Uint32Array ids = info[0].As<Napi::Uint32Array>();
    double count = info[1].As<Napi::Number>().DoubleValue();
    if (!(count >= 0 && count <= ids.ElementLength()) || count != static_cast<double>(static_cast<size_t>(count))) {
      ThrowRange(env, "verdictEach: count must be an integer ≤ ids.length");
      return env.Undefined();
    }
    if (!IsOpen(info)) return env.Undefined();
    uint32_t verdict = info[2].As<Napi::Boolean>().Value() ? NF_ACCEPT : NF_DROP;
    std::vector<uint8_t> buf(kVerdictSendBytes);
    size_t used = 0;
    for (size_t i = 0; i < static_cast<size_t>(count); i++) {
      if (used + kVerdictMsgBytes > buf.size()) {
        if (!Send(env, buf.data(), used)) return env.Undefined();
        used = 0;
      }
      PutVerdict(buf.data() + used, ids[i], verdict);
      used += kVerdictMsgBytes;
    }
    if (used > 0 && !Send(env, buf.data(), used)) return env.Undefined();
    return env.Undefined();
  }

  void PutVerdict(uint8_t* p, uint32_t id, uint32_t verdict) {
    std::memset(p, 0, kVerdictMsgBytes);
    auto* nlh = reinterpret_cast<nlmsghdr*>(p);
    nlh->nlmsg_len = kVerdictMsgBytes;
    nlh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT;
    nlh->nlmsg_flags = NLM_F_REQUEST;
    nlh->nlmsg_seq = ++seq_;
    auto* g = reinterpret_cast<nfgenmsg*>(p + NLMSG_ALIGN(sizeof(nlmsghdr)));
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(static_cast<uint16_t>(queueNum_));
    auto* nla = reinterpret_cast<nlattr*>(reinterpret_cast<uint8_t*>(g) + NLMSG_ALIGN(sizeof(nfgenmsg)));
    nla->nla_len = NLA_HDRLEN + sizeof(nfqnl_msg_verdict_hdr);
    nla->nla_type = NFQA_VERDICT_HDR;
    auto* vh = reinterpret_cast<nfqnl_msg_verdict_hdr*>(reinterpret_cast<uint8_t*>(nla) + NLA_HDRLEN);
    vh->verdict = htonl(verdict);
    vh->id = htonl(id);
  }

  bool Send(Napi::Env env, const uint8_t* p, size_t len) {
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    for (;;) {
      ssize_t n = sendto(fd_, p, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel);
      if (n == static_cast<ssize_t>(len)) {
        verdictMsgs_ += len / kVerdictMsgBytes;
        return true;
      }
      if (n < 0 && errno == EINTR) continue;
      ThrowRemus(env, ErrCode::kNetbuf, n < 0 ? Errno("sendto (verdicts)") : "sendto (verdicts): short write");
      return false;
    }
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object s = Napi::Object::New(env);
    s.Set("received", Napi::Number::New(env, static_cast<double>(received_)));
    s.Set("batches", Napi::Number::New(env, static_cast<double>(batches_)));
    s.Set("verdictMsgs", Napi::Number::New(env, static_cast<double>(verdictMsgs_)));
    s.Set("netlinkErrors", Napi::Number::New(env, static_cast<double>(netlinkErrors_)));
    s.Set("recvErrors", Napi::Number::New(env, static_cast<double>(recvErrors_)));
    s.Set("lastErrno", lastErrno_);
    s.Set("open", q_ != nullptr);
    return s;
  }

  // close(): stops reading and unbinds; the kernel drops every packet still queued.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    bool wasOpen = poll_ != nullptr;
    CloseQueue();
    if (wasOpen) Unref();
    return info.Env().Undefined();
  }

  uint32_t queueNum_ = 0, copyBytes_ = 0, queueMaxLen_ = 0, rcvbufBytes_ = 0, batchMax_ = 0;
  nfq_handle* h_ = nullptr;
  nfq_q_handle* q_ = nullptr;
  int fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  std::vector<uint8_t> recvBuf_;
  size_t recvSlotBytes_ = 4096;
  Napi::Reference<Napi::Uint32Array> ids_, ipLens_, marks_;
  Napi::Reference<Napi::Uint16Array> protos_, capLens_;
  Napi::Reference<Napi::Buffer<uint8_t>> headers_;
  Napi::FunctionReference onBatch_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  uint32_t count_ = 0;
  bool reading_ = false;  // OnPacket writes the batch only inside ReadBatch
  uint32_t* idsData_ = nullptr;
  uint32_t* ipLensData_ = nullptr;
  uint32_t* marksData_ = nullptr;
  uint16_t* protosData_ = nullptr;
  uint16_t* capLensData_ = nullptr;
  uint8_t* headersData_ = nullptr;
  uint32_t seq_ = 0;
  uint64_t received_ = 0, batches_ = 0, verdictMsgs_ = 0, netlinkErrors_ = 0, recvErrors_ = 0;
  int lastErrno_ = 0;
};

}  // namespace

// sendRawIp(packet, netnsPath?): sends one complete IP packet (header included, checksums
// filled in by the caller) through a raw socket created inside netnsPath when given. The
// failover resets (dom0/net/failover-reset.ts) forge TCP RSTs with it.
Napi::Value SendRawIp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsString())) {
    ThrowType(env, "sendRawIp(packet: Uint8Array, netnsPath?: string)");
    return env.Undefined();
  }
  Napi::Uint8Array pkt = info[0].As<Napi::Uint8Array>();
  const uint8_t* p = pkt.Data();
  size_t len = pkt.ByteLength();
  bool v6 = len >= 40 && (p[0] >> 4) == 6;
  if (!v6 && !(len >= 20 && (p[0] >> 4) == 4)) { ThrowRange(env, "sendRawIp: not an IPv4/IPv6 packet"); return env.Undefined(); }
  std::string netns = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  int fd = -1;
  std::string why = InNetns(netns, [&] {
    fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    return fd < 0 ? std::string("raw socket: ") + std::strerror(errno) : std::string();
  });
  if (!why.empty()) { ThrowRemus(env, ErrCode::kNetbuf, why); return env.Undefined(); }
  sockaddr_storage to{};
  socklen_t toLen;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&to);
    a->sin6_family = AF_INET6;
    std::memcpy(&a->sin6_addr, p + 24, 16);
    toLen = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&to);
    a->sin_family = AF_INET;
    std::memcpy(&a->sin_addr, p + 16, 4);
    toLen = sizeof *a;
  }
  ssize_t n = sendto(fd, p, len, 0, reinterpret_cast<sockaddr*>(&to), toLen);
  int sendErrno = errno;
  close(fd);
  if (n != static_cast<ssize_t>(len)) {
    ThrowRemus(env, ErrCode::kNetbuf, std::string("raw sendto: ") + (n < 0 ? std::strerror(sendErrno) : "short write"));
  }
  return env.Undefined();
}

void InitNfqueueDriver(Napi::Env env, Napi::Object exports) {
  exports.Set("NfqueueQueue", NfqueueQueue::Define(env));
  exports.Set("sendRawIp", Napi::Function::New(env, SendRawIp, "sendRawIp"));
}

}  // namespace remus
