// classify_tc.h: what the in-kernel classifier (classify_tc.bpf.c) and its loader
// (bpf_classifier.cc) share: the map layouts, the counters and the bounds. Both sides compile
// it: the BPF object with clang -target bpf, the addon with g++.
#pragma once
#include <linux/types.h>

// Server ports whose connections are followed (the rest of the guest's IP traffic is held).
#define PGW_PORTS_MAX 8
// Held sequence ranges remembered per flow for retransmissions (older bytes: held).
#define PGW_HELD_RANGES 16
// Flows followed at once (an LRU table: an evicted flow is opaque when it comes back).
#define PGW_FLOWS_MAX_DEFAULT 16384
#define PGW_FLOWS_MAX 1048576
// Bytes of one segment the parser reads (a GSO packet is at most 64 KiB of IP).
#define PGW_SEGMENT_BYTES 65536
// The ring of exposure records (one per packet that left in the kernel), in bytes.
#define PGW_EXPOSURE_RING_BYTES (4 << 20)
// The tc filter's handle and priority on the interface's ingress hook.
#define PGW_TC_HANDLE 0x52db
#define PGW_TC_PRIORITY 0xc052

// What the program classifies by: the PostgreSQL protocol (`--commit-protection pgwire
// --pgwire-in-kernel`) or the guest's DSCP mark (`--commit-protection dscp --dscp-in-kernel`).
#define PGW_MODE_PGWIRE 0
#define PGW_MODE_DSCP 1

struct pgw_config {
  __u32 mode;
  __u32 dscp;        // dscp mode: the code point of packets to hold
  __u16 ports[PGW_PORTS_MAX];
  __u32 nports;
  __u32 mark_mask;   // bits of skb->mark this classifier owns
  __u32 mark_hold;   // hold until the checkpoint is acknowledged
  __u32 mark_follow; // passes, but behind a packet of its flow that is still queued
};

// The ledger's epochs as userspace last wrote them (one value, one update).
struct pgw_epochs {
  __u64 open;     // packets arriving now belong to this epoch
  __u64 released; // every packet queued in an epoch <= this one has left the queue
};

// What a packet that left in the kernel showed its client (failover-reset.ts reads it as a
// packet: addresses, ports, sequence, ACK, flags, payload length), and its epoch.
struct pgw_exposure {
  __u8 v6, flags;
  __u16 sport, dport;
  __u16 pad;
  __u8 src[16], dst[16];
  __u32 seq, ack, payload_len, pad2;
  __u64 epoch;
};

enum pgw_stat {
  PGW_PACKETS,
  PGW_NOT_IP,         // passed: not IPv4/IPv6 (ARP)
  PGW_OTHER_HELD,     // held: IP but not TCP from a server port
  PGW_HELD,           // held: a segment of a followed flow
  PGW_FOLLOW,         // queued behind its flow
  PGW_PASSED,         // left in the kernel
  PGW_RETRANSMISSIONS,
  PGW_COMMITS,
  PGW_FLOWS_OPENED,
  PGW_FLOWS_ENDED,
  PGW_AFTER_END,      // pure ACK / FIN of a flow that had ended: passed
  PGW_UNSYNCED,       // packets of opaque flows
  PGW_OPAQUE_ENCRYPTED,
  PGW_OPAQUE_TYPE,
  PGW_OPAQUE_LENGTH,
  PGW_OPAQUE_Z,
  PGW_OPAQUE_NO_SYN,
  PGW_OPAQUE_GAP,
  PGW_OPAQUE_INTERNAL, // a segment the parser could not read (a bound, a failed load)
  PGW_EXPOSURE_LOST,   // packets that left while the exposure ring was full (not tracked)
  PGW_STATS_N,
};
