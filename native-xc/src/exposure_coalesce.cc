// exposure_coalesce.cc: see exposure_coalesce.h.
#include "exposure_coalesce.h"

namespace remus {
namespace {

constexpr uint8_t kTcpFin = 0x01, kTcpSyn = 0x02, kTcpAck = 0x10;

int32_t SeqDiff(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b); }

uint32_t SeqEnd(const pgw_exposure& e) {
  return e.seq + e.payload_len + ((e.flags & kTcpSyn) ? 1 : 0) + ((e.flags & kTcpFin) ? 1 : 0);
}

}  // namespace

size_t ExposureCoalescer::KeyHash::operator()(const Key& k) const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's octets
  for (uint8_t b : k) h = (h ^ b) * 1099511628211ull;
  return static_cast<size_t>(h);
}

void ExposureCoalescer::Add(const pgw_exposure& e) {
  added_++;
  Key k{};
  k[0] = e.v6;
  std::memcpy(&k[1], &e.sport, 2);
  std::memcpy(&k[3], &e.dport, 2);
  std::memcpy(&k[5], e.src, 16);
  std::memcpy(&k[21], e.dst, 16);
  std::memcpy(&k[37], &e.epoch, 8);
  const uint32_t end = SeqEnd(e);
  const bool acks = (e.flags & kTcpAck) != 0;
  auto [it, fresh] = index_.try_emplace(k, merged_.size());
  if (fresh) {
    pgw_exposure m = e;
    m.seq = end;
    m.payload_len = 0;
    m.flags = acks ? kTcpAck : 0;
    m.ack = acks ? e.ack : 0;
    merged_.push_back(m);
    return;
  }
  pgw_exposure& m = merged_[it->second];
  if (SeqDiff(end, m.seq) > 0) m.seq = end;
  if (acks && (!(m.flags & kTcpAck) || SeqDiff(e.ack, m.ack) > 0)) {
    m.ack = e.ack;
    m.flags = kTcpAck;
  }
}

void ExposureCoalescer::Take(std::vector<uint8_t>* out) {
  const auto* p = reinterpret_cast<const uint8_t*>(merged_.data());
  out->insert(out->end(), p, p + merged_.size() * sizeof(pgw_exposure));
  merged_.clear();
  index_.clear();
}

}  // namespace remus
