// exposure_coalesce.h: one record per flow and epoch out of a drain of the classifier's
// exposure ring (bpf/classify_tc.h struct pgw_exposure). What the failover reset tracker keeps
// of a flow's packets that left in the kernel is the highest sequence end and ACK per epoch
// (dom0/net/failover-reset.ts); merging here keeps its per-packet work in JavaScript to one
// record per flow. A merged record says the same: seq = the highest sequence end, payload 0,
// flags ACK (with the highest ack) or none; dom0/net/kernel-classifier.ts coalesceExposures
// gives it the same meaning as the packets it stands for (test 62c checks the two agree).
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "bpf/classify_tc.h"

namespace remus {

class ExposureCoalescer {
 public:
  /** Adds one record (its raw bytes, sizeof(pgw_exposure)). */
  void Add(const pgw_exposure& e);
  /** Appends the merged records in the order their flows first appeared, then starts over. */
  void Take(std::vector<uint8_t>* out);
  /** Records added since the start (not merged). */
  uint64_t added() const { return added_; }

 private:
  using Key = std::array<uint8_t, 48>;  // v6, sport, dport, src, dst, epoch
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  std::unordered_map<Key, size_t, KeyHash> index_;  // key → position in merged_
  std::vector<pgw_exposure> merged_;
  uint64_t added_ = 0;
};

}  // namespace remus
