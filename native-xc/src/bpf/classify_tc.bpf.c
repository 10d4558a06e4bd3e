// classify_tc.bpf.c: commit protection classified in the kernel — a tc
// classifier on the ingress hook of the guest's interface (its output). It follows each
// PostgreSQL connection the guest serves by sequence number and marks only the packets
// that must wait for the checkpoint; iptables queues the marked ones (NFQUEUE), and every
// other packet leaves without reaching dom0's userspace. Same rules as the userspace
// classifier (dom0/net/pgwire-classifier.ts, pgwire-parser.ts; docs/commit-protection.md):
//   not IP (ARP)                                no mark: leaves
//   IP but not TCP from a server port           mark_hold
//   SYN from the server                         leaves; a stream starts at ISN + 1
//   RST                                         leaves; the flow ends
//   data at the expected sequence               parsed; mark_hold iff it carries bytes of a
//                                               commit acknowledgement (or of a cycle whose
//                                               end is not in the segment)
//   data before it (retransmission)             mark_hold iff it overlaps a held range (or
//                                               lies below those remembered); new bytes parsed
//   data after it (a gap), a flow not seen      the flow is opaque: every later packet held
//     from its SYN, TLS, a message it cannot read
//   pure ACK / FIN                              the verdict of its data; FIN ends the flow
// In dscp mode (`--dscp-in-kernel`, classify-dscp.ts's rules) it holds instead the IP packets
// the guest marked with the DSCP code point (and IP headers it cannot read), and leaves the
// rest; per-flow order and the exposure ring work the same in both modes.
// Per-flow order: a packet that would leave while an earlier packet of its flow is still in
// the queue (queued in an epoch above `released`) gets mark_follow instead: it is queued
// and leaves as soon as nothing earlier of its flow is held (packet-ledger.ts).
// Each packet that leaves in the kernel is written to a ring (`exposures`): what its client
// saw unprotected, for the failover resets (failover-reset.ts; drained at every release and every 5 ms).
// The parser runs in bpf_loop over a per-CPU copy of the segment's new bytes: one step per
// message header or body, so a 64 KiB segment of small rows stays within the loop's bound.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "classify_tc.h"

enum { MODE_START, MODE_MESSAGES, MODE_OPAQUE };
#define SEG_MASK (PGW_SEGMENT_BYTES - 1)
#define COMMIT_TAG 0x0054494d4d4f43ULL // "COMMIT\0", byte k at bits 8k
#define COMMIT_TAG_LEN 7

struct parser {
  __u32 body_left;
  __u8 mode, hdr_len, type, status;
  __u8 hdr[8]; // 5 used
  __s8 tag_match; // bytes of the C tag matching "COMMIT\0" so far (-1: no match)
  __u8 had_complete, commit_tag, touched;
};

struct flow_key {
  __u8 v6, pad;
  __u16 sport, dport, pad2;
  __u8 src[16], dst[16];
};

struct flow {
  struct parser p;
  __u32 next;  // next stream byte expected
  __u32 floor; // bytes before it are no longer described by held[]: held
  __u32 held_start[PGW_HELD_RANGES], held_end[PGW_HELD_RANGES]; // oldest first
  __u32 nheld;
  __u32 ended; // FIN or RST seen: its last ACKs pass, data makes it opaque again
  __u64 queued_epoch; // the epoch of its last packet sent to the queue (0: none)
};

struct scratch {
  __u8 buf[PGW_SEGMENT_BYTES];
};

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, PGW_FLOWS_MAX_DEFAULT); // the loader sets flowsMax
  __type(key, struct flow_key);
  __type(value, struct flow);
} flows SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct pgw_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct pgw_epochs);
} epochs SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, PGW_STATS_N);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

// One slot per possible CPU (the loader sets max_entries); a tc program does not migrate.
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct scratch);
} scratch SEC(".maps");

// Packets that left in the kernel, for the failover reset tracker (drained at every release and every 5 ms).
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, PGW_EXPOSURE_RING_BYTES);
} exposures SEC(".maps");

static __always_inline void count(__u32 which, __u64 n) {
  __u64* v = bpf_map_lookup_elem(&stats, &which);
  if (v) *v += n;
}

static __always_inline int seq_diff(__u32 a, __u32 b) { return (int)(a - b); }

// Backend message types of protocol 3.0: "RKSZCDTENAGHWdc123nIstvV".
static __always_inline int backend_type(__u8 t) {
  const __u64 lo = (1ULL << '1') | (1ULL << '2') | (1ULL << '3');
  const __u64 hi = (1ULL << ('A' - 64)) | (1ULL << ('C' - 64)) | (1ULL << ('D' - 64)) | (1ULL << ('E' - 64)) |
                   (1ULL << ('G' - 64)) | (1ULL << ('H' - 64)) | (1ULL << ('I' - 64)) | (1ULL << ('K' - 64)) |
                   (1ULL << ('N' - 64)) | (1ULL << ('R' - 64)) | (1ULL << ('S' - 64)) | (1ULL << ('T' - 64)) |
                   (1ULL << ('V' - 64)) | (1ULL << ('W' - 64)) | (1ULL << ('Z' - 64)) | (1ULL << ('c' - 64)) |
                   (1ULL << ('d' - 64)) | (1ULL << ('n' - 64)) | (1ULL << ('s' - 64)) | (1ULL << ('t' - 64)) |
                   (1ULL << ('v' - 64));
  if (t < 64) return (lo >> t) & 1;
  if (t < 128) return (hi >> (t - 64)) & 1;
  return 0;
}

struct pctx {
  struct parser p;
  __u32 i, len;
  __u32 commits;
  __u32 opaque_why; // a PGW_OPAQUE_* counter when the parser gave up on the stream
  __u8 hold;
};

static __always_inline void to_opaque(struct pctx* c, __u32 why) {
  if (c->p.mode == MODE_OPAQUE) return;
  c->p.mode = MODE_OPAQUE;
  c->opaque_why = why;
}

static __always_inline int begin_body(struct pctx* c) {
  struct parser* p = &c->p;
  __u32 len = ((__u32)p->hdr[1] << 24) | ((__u32)p->hdr[2] << 16) | ((__u32)p->hdr[3] << 8) | p->hdr[4];
  p->type = p->hdr[0];
  if (len < 4 || len > 0x7fffffff) {
    to_opaque(c, PGW_OPAQUE_LENGTH);
    return 0;
  }
  if (p->type == 'Z' && len != 5) {
    to_opaque(c, PGW_OPAQUE_Z);
    return 0;
  }
  p->body_left = len - 4;
  p->tag_match = 0;
  return 1;
}

// A message ended; 1 when it ends a cycle that must be held in this segment.
static __always_inline int end_message(struct pctx* c) {
  struct parser* p = &c->p;
  p->hdr_len = 0;
  if (p->type == 'C') {
    p->had_complete = 1;
    if (p->tag_match == COMMIT_TAG_LEN) p->commit_tag = 1;
    return 0;
  }
  if (p->type != 'Z') return 0;
  __u8 s = p->status;
  if (s != 'I' && s != 'T' && s != 'E') {
    to_opaque(c, PGW_OPAQUE_Z);
    return 1;
  }
  int commit = (s == 'I' && p->had_complete) || p->commit_tag;
  int hold = commit && p->touched;
  if (commit) c->commits++;
  p->had_complete = 0;
  p->commit_tag = 0;
  p->touched = 0;
  return hold;
}

// Reads up to 5 header bytes; 0 to go on, 1 to stop.
static __always_inline long header_step(struct pctx* c, const struct scratch* s) {
  struct parser* p = &c->p;
  int first = p->hdr_len == 0;
  __u32 n = 5 - p->hdr_len;
  if (n > c->len - c->i) n = c->len - c->i;
  for (__u32 k = 0; k < 5; k++) {
    if (k >= n) break;
    p->hdr[(p->hdr_len + k) & 7] = s->buf[(c->i + k) & SEG_MASK];
  }
  p->hdr_len += n;
  c->i += n;
  if (first && !backend_type(p->hdr[0])) {
    to_opaque(c, PGW_OPAQUE_TYPE);
    return 1;
  }
  if (p->hdr[0] == 'C' || p->hdr[0] == 'Z') p->touched = 1;
  if (p->hdr_len == 5) {
    if (!begin_body(c)) return 1;
    if (p->body_left == 0 && end_message(c)) c->hold = 1;
  }
  return p->mode == MODE_OPAQUE;
}

static __always_inline long body_step(struct pctx* c, const struct scratch* s) {
  struct parser* p = &c->p;
  __u32 n = p->body_left;
  if (n > c->len - c->i) n = c->len - c->i;
  __u8 b = s->buf[c->i & SEG_MASK];
  if (p->type == 'C') {
    if (p->tag_match >= 0 && p->tag_match < COMMIT_TAG_LEN) {
      n = 1;
      __u8 want = (COMMIT_TAG >> (8 * (p->tag_match & 7))) & 0xff;
      p->tag_match = b == want ? p->tag_match + 1 : -1;
    }
  } else if (p->type == 'Z') {
    p->status = b;
  }
  if (p->type == 'C' || p->type == 'Z') p->touched = 1;
  c->i += n;
  p->body_left -= n;
  if (p->body_left == 0 && end_message(c)) c->hold = 1;
  return p->mode == MODE_OPAQUE;
}

// One step of the parser (pgwire-parser.ts `segment`): 0 to go on, 1 to stop.
static long parse_step(__u32 index, struct pctx* c) {
  if (c->i >= c->len || c->p.mode == MODE_OPAQUE) return 1;
  __u32 cpu = bpf_get_smp_processor_id();
  const struct scratch* s = bpf_map_lookup_elem(&scratch, &cpu);
  if (!s) {
    to_opaque(c, PGW_OPAQUE_INTERNAL);
    return 1;
  }
  struct parser* p = &c->p;
  if (p->mode == MODE_START && p->hdr_len == 0) {
    __u8 b = s->buf[c->i & SEG_MASK];
    if (b == 'N') {
      c->i++;
      return 0;
    }
    if (b == 'S' || b == 'G' || b == 0x16) {
      to_opaque(c, PGW_OPAQUE_ENCRYPTED);
      return 1;
    }
    p->mode = MODE_MESSAGES;
  }
  if (p->hdr_len < 5) return header_step(c, s);
  return body_step(c, s);
}

// Parses `len` new stream bytes at `off` of the packet; 1: hold the segment.
static __always_inline int parse_fresh(struct __sk_buff* skb, struct flow* f, __u32 off, __u32 len) {
  struct pctx c = {};
  c.p = f->p;
  c.len = len;
  __u32 cpu = bpf_get_smp_processor_id();
  struct scratch* s = bpf_map_lookup_elem(&scratch, &cpu);
  // 1..PGW_SEGMENT_BYTES in a form the verifier can follow (the mask changes nothing once checked)
  __u32 n = len - 1;
  asm volatile("" : "+r"(n));
  n = (n & SEG_MASK) + 1;
  if (!s || len == 0 || len > PGW_SEGMENT_BYTES || bpf_skb_load_bytes(skb, off, s->buf, n) < 0) {
    to_opaque(&c, PGW_OPAQUE_INTERNAL);
  } else {
    c.p.touched = 0;
    bpf_loop(PGW_SEGMENT_BYTES + 1, parse_step, &c, 0);
    if (c.i < c.len) to_opaque(&c, PGW_OPAQUE_INTERNAL);
  }
  if (c.commits) count(PGW_COMMITS, c.commits);
  if (c.p.mode == MODE_OPAQUE && f->p.mode != MODE_OPAQUE) count(c.opaque_why, 1);
  f->p = c.p;
  return c.hold || c.p.touched || c.p.mode == MODE_OPAQUE;
}

static __always_inline int was_held(const struct flow* f, __u32 start, __u32 end) {
  if (seq_diff(start, f->floor) < 0) return 1;
  for (__u32 k = 0; k < PGW_HELD_RANGES; k++) {
    if (k >= f->nheld) break;
    if (seq_diff(start, f->held_end[k]) < 0 && seq_diff(f->held_start[k], end) < 0) return 1;
  }
  return 0;
}

static __always_inline void remember(struct flow* f, __u32 start, __u32 end) {
  if (f->nheld > 0 && f->nheld <= PGW_HELD_RANGES) {
    __u32 last = (f->nheld - 1) & (PGW_HELD_RANGES - 1);
    if (seq_diff(start, f->held_end[last]) <= 0 && seq_diff(end, f->held_end[last]) > 0) {
      f->held_end[last] = end;
      return;
    }
    if (seq_diff(end, f->held_end[last]) <= 0) return;
  }
  if (f->nheld == PGW_HELD_RANGES) {
    f->floor = f->held_end[0];
    for (__u32 k = 0; k + 1 < PGW_HELD_RANGES; k++) {
      f->held_start[k] = f->held_start[k + 1];
      f->held_end[k] = f->held_end[k + 1];
    }
    f->nheld--;
  }
  __u32 at = f->nheld & (PGW_HELD_RANGES - 1);
  f->held_start[at] = start;
  f->held_end[at] = end;
  f->nheld++;
}

struct segment {
  struct flow_key key;
  __u32 seq, ack, payload_off, payload_len;
  __u8 flags;
};

static __always_inline struct flow* open_flow(const struct flow_key* key, __u32 next, __u64 queued_epoch) {
  struct flow f = {};
  f.next = next;
  f.floor = next;
  f.queued_epoch = queued_epoch;
  if (bpf_map_update_elem(&flows, key, &f, BPF_ANY) < 0) return 0;
  count(PGW_FLOWS_OPENED, 1);
  return bpf_map_lookup_elem(&flows, key);
}

static __always_inline void end_flow(struct flow* f) {
  if (!f->ended) count(PGW_FLOWS_ENDED, 1);
  f->ended = 1;
}

// The data of a followed flow (pgwire-classifier.ts `segmentVerdict`); 1: hold. A global
// function: the verifier checks it once, not once per path into it (that would pass its limit).
__attribute__((noinline)) int segment_verdict(struct __sk_buff* skb, struct flow* f, const struct segment* s) {
  if (!f || !s) return 1;
  if (f->p.mode == MODE_OPAQUE) {
    count(PGW_UNSYNCED, 1);
    return 1;
  }
  if (s->payload_len == 0) return 0;
  __u32 start = s->seq, end = s->seq + s->payload_len;
  int ahead = seq_diff(start, f->next);
  if (ahead > 0) {
    f->p.mode = MODE_OPAQUE;
    count(PGW_OPAQUE_GAP, 1);
    return 1;
  }
  int hold = 0;
  if (ahead < 0) {
    count(PGW_RETRANSMISSIONS, 1);
    __u32 old_end = seq_diff(end, f->next) < 0 ? end : f->next;
    hold = was_held(f, start, old_end);
  }
  if (seq_diff(end, f->next) > 0) {
    __u32 skip = f->next - start;
    if (parse_fresh(skb, f, s->payload_off + skip, s->payload_len - skip)) hold = 1;
    f->next = end;
  }
  if (hold) remember(f, start, end);
  return hold;
}

// 1: hold, 0: release; `f` is the flow after the packet (null when there is none).
static __always_inline int flow_verdict(struct __sk_buff* skb, const struct segment* s, struct flow** fp,
                                        __u64 epoch_open) {
  struct flow* f = bpf_map_lookup_elem(&flows, &s->key);
  *fp = f;
  if (s->flags & 0x04) { // RST: the flow ends (one not seen before is remembered as ended too)
    if (!f) f = open_flow(&s->key, s->seq, 0);
    *fp = f;
    if (f) end_flow(f);
    return 0;
  }
  if (s->flags & 0x02) { // SYN
    *fp = open_flow(&s->key, s->seq + 1, f ? f->queued_epoch : 0);
    return 0;
  }
  if (f && f->ended && s->payload_len == 0) {
    count(PGW_AFTER_END, 1);
    return 0;
  }
  if (!f || f->ended) {
    f = open_flow(&s->key, s->seq, f ? f->queued_epoch : 0);
    *fp = f;
    if (!f) return 1;
    f->p.mode = MODE_OPAQUE;
    count(PGW_OPAQUE_NO_SYN, 1);
  }
  int hold = segment_verdict(skb, f, s);
  if (s->flags & 0x01) end_flow(f); // FIN
  return hold;
}

// Reads the IP and TCP headers; 1 when the packet is TCP (fills s), 0 otherwise.
static __always_inline int read_segment(struct __sk_buff* skb, __u16 proto, struct segment* s) {
  __u32 ip_len, total;
  if (proto == bpf_htons(ETH_P_IP)) {
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0) return 0;
    ip_len = ip.ihl * 4;
    total = bpf_ntohs(ip.tot_len);
    if (ip.version != 4 || ip_len < 20 || total < ip_len) return 0;
    if ((ip.frag_off & bpf_htons(0x3fff)) || ip.protocol != IPPROTO_TCP) return 0;
    __builtin_memcpy(s->key.src, &ip.saddr, 4);
    __builtin_memcpy(s->key.dst, &ip.daddr, 4);
  } else {
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0) return 0;
    if (ip6.version != 6 || ip6.nexthdr != IPPROTO_TCP) return 0;
    ip_len = sizeof(ip6);
    total = sizeof(ip6) + bpf_ntohs(ip6.payload_len);
    __builtin_memcpy(s->key.src, &ip6.saddr, 16);
    __builtin_memcpy(s->key.dst, &ip6.daddr, 16);
    s->key.v6 = 1;
  }
  struct tcphdr th;
  if (bpf_skb_load_bytes(skb, ETH_HLEN + ip_len, &th, sizeof(th)) < 0) return 0;
  __u32 doff = th.doff * 4;
  if (doff < 20 || total < ip_len + doff || ETH_HLEN + total > skb->len) return 0;
  s->key.sport = bpf_ntohs(th.source);
  s->key.dport = bpf_ntohs(th.dest);
  s->seq = bpf_ntohl(th.seq);
  s->ack = bpf_ntohl(th.ack_seq);
  s->flags = ((__u8*)&th)[13];
  s->payload_off = ETH_HLEN + ip_len + doff;
  s->payload_len = total - ip_len - doff;
  return 1;
}

static __always_inline int server_port(const struct pgw_config* cfg, __u16 port) {
  for (__u32 k = 0; k < PGW_PORTS_MAX; k++) {
    if (k >= cfg->nports) break;
    if (cfg->ports[k] == port) return 1;
  }
  return 0;
}

static __always_inline int set_mark(struct __sk_buff* skb, const struct pgw_config* cfg, __u32 mark) {
  skb->mark = (skb->mark & ~cfg->mark_mask) | mark;
  return TC_ACT_OK;
}

static __always_inline void expose(const struct segment* s, __u64 epoch) {
  struct pgw_exposure* e = bpf_ringbuf_reserve(&exposures, sizeof(*e), 0);
  if (!e) {
    count(PGW_EXPOSURE_LOST, 1);
    return;
  }
  e->v6 = s->key.v6;
  e->flags = s->flags;
  e->sport = s->key.sport;
  e->dport = s->key.dport;
  e->pad = 0;
  __builtin_memcpy(e->src, s->key.src, 16);
  __builtin_memcpy(e->dst, s->key.dst, 16);
  e->seq = s->seq;
  e->ack = s->ack;
  e->payload_len = s->payload_len;
  e->pad2 = 0;
  e->epoch = epoch;
  bpf_ringbuf_submit(e, 0);
}

// The DSCP of an IP packet by its version nibble (classify-dscp.ts dscpOf); -1: not readable.
static __always_inline int dscp_of(struct __sk_buff* skb) {
  __u8 b[2];
  if (bpf_skb_load_bytes(skb, ETH_HLEN, b, 2) < 0) return -1;
  if (b[0] >> 4 == 4) return skb->len >= ETH_HLEN + 20 ? b[1] >> 2 : -1;
  if (b[0] >> 4 == 6) return skb->len >= ETH_HLEN + 40 ? (((b[0] & 0x0f) << 4) | (b[1] >> 4)) >> 2 : -1;
  return -1;
}

// dscp mode: hold what the guest marked, keep per-flow order, record what leaves.
static __always_inline int dscp_classify(struct __sk_buff* skb, const struct pgw_config* cfg,
                                         const struct pgw_epochs* ep, __u16 proto) {
  int dscp = dscp_of(skb);
  struct segment s = {};
  int tcp = read_segment(skb, proto, &s);
  struct flow* f = tcp ? bpf_map_lookup_elem(&flows, &s.key) : 0;
  if (dscp < 0 || dscp == (int)cfg->dscp) {
    count(PGW_HELD, 1);
    if (tcp && !f) f = open_flow(&s.key, 0, 0);
    if (f) f->queued_epoch = ep->open;
    return set_mark(skb, cfg, cfg->mark_hold);
  }
  if (f && f->queued_epoch > ep->released) {
    count(PGW_FOLLOW, 1);
    f->queued_epoch = ep->open;
    return set_mark(skb, cfg, cfg->mark_follow);
  }
  count(PGW_PASSED, 1);
  if (tcp) expose(&s, ep->open);
  return TC_ACT_OK;
}

SEC("tc")
int classify(struct __sk_buff* skb) {
  __u32 zero = 0;
  const struct pgw_config* cfg = bpf_map_lookup_elem(&config, &zero);
  const struct pgw_epochs* ep = bpf_map_lookup_elem(&epochs, &zero);
  if (!cfg || !ep) return TC_ACT_OK;
  count(PGW_PACKETS, 1);
  __u16 proto = skb->protocol;
  if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6)) {
    count(PGW_NOT_IP, 1);
    return TC_ACT_OK;
  }
  if (cfg->mode == PGW_MODE_DSCP) return dscp_classify(skb, cfg, ep, proto);
  struct segment s = {};
  if (!read_segment(skb, proto, &s) || !server_port(cfg, s.key.sport)) {
    count(PGW_OTHER_HELD, 1);
    return set_mark(skb, cfg, cfg->mark_hold);
  }
  __u64 epoch_open = ep->open, released = ep->released;
  struct flow* f = 0;
  int hold = flow_verdict(skb, &s, &f, epoch_open);
  if (hold) {
    count(PGW_HELD, 1);
    if (f) f->queued_epoch = epoch_open;
    return set_mark(skb, cfg, cfg->mark_hold);
  }
  if (f && f->queued_epoch > released) {
    count(PGW_FOLLOW, 1);
    f->queued_epoch = epoch_open;
    return set_mark(skb, cfg, cfg->mark_follow);
  }
  count(PGW_PASSED, 1);
  expose(&s, epoch_open);
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
