// limits: the sizes, bounds and default ports remusdb is built around, in one place, each
// with its unit in its name. The page and page record sizes and the decoder's segment bound
// are also compiled into the native addon (native-xc/src/page_codec.h): native.ts checks
// them against the addon's codecConstants when it loads it, so the two can never disagree.

/** A guest page: the unit of dirty tracking, capture, the page codecs and the memory image. */
export const PAGE_BYTES = 4096;

/** A page record's header: u64 pfn, u8 encoding, u8 0, u16 payload length (docs/memory-encoding.md). */
export const PAGE_RECORD_HEADER_BYTES = 12;

/** The largest page record: its header and a raw page. */
export const PAGE_RECORD_BYTES_MAX = PAGE_RECORD_HEADER_BYTES + PAGE_BYTES;

/** Segments of guest memory the native decoder takes in one call (its DecodeTarget's bound). */
export const IMAGE_SEGMENTS_MAX = 1024;

/**
 * A disk block: the unit of the resync bitmap, block generations and read tracking. A page,
 * so that a page the guest read from its disk is one whole block.
 */
export const DISK_BLOCK_BYTES = 4096;

/** The TCP port a backup listens on, and a primary dials when the backup's address has none. */
export const DEFAULT_REPLICATION_PORT = 7400;

/** The TCP port `remusdb disk serve` (and a protected Xen domain's NBD disk) listens on: NBD's own. */
export const DEFAULT_NBD_PORT = 10809;

/** Disks from this size get protect's warning that --verify-disk pauses the guest to read them whole. */
export const DISK_VERIFY_WARN_BYTES = 1024 ** 3;
/** Ranges a DISK_SCRUB carries at most: ≤ 8 MiB for the backup to read at one commit. */
export const DISK_SCRUB_RANGES_MAX = 8;
/** Longest range a DISK_SCRUB may name (the primary's are 1 MiB). */
export const DISK_SCRUB_RANGE_BYTES_MAX = 16 * 2 ** 20;
/**
 * What the scrub reads on each host, at most, in bytes per second: a pass over a 100 GiB disk
 * takes 53 min. Unpaced, 8 MiB per checkpoint of 50 ms read 160 MB/s on both hosts, which
 * held outputs longer than the whole check it replaces (docs/disk.md, "Scrub").
 */
export const DISK_SCRUB_BYTES_PER_S_DEFAULT = 32 * 2 ** 20;
/** How far the scrub's reads run ahead of its pass, in ranges (16 MiB of 1 MiB ranges). */
export const SCRUB_READ_AHEAD_RANGES = 16;
/**
 * Most range CRCs a DISK_VERIFY carries (4 MiB of them): a disk of more than 1 TiB sends its
 * 1 MiB ranges' CRCs combined in twos, fours… (a 16 TiB disk: 16 MiB ranges).
 */
export const DISK_VERIFY_RANGES_MAX = 2 ** 20;
/**
 * Runs of differing ranges a backup names in its HELLO_ACK after a failed disk check (the next
 * session copies them); past it, the whole disk. 4096 runs of [offset, length] are ~100 KiB of JSON.
 */
export const DISK_DIFFERING_RUNS_MAX = 4096;
/** Unacknowledged disk writes a primary forwards and a backup holds before the session drops (--disk-buffer). */
export const DISK_BUFFER_BYTES_DEFAULT = 256 * 2 ** 20;

/** Pages per batch of page records: what the encoder packs and the decoder stages at once. */
export const BATCH_PAGES_MAX_DEFAULT = 1024;

/**
 * Largest device state a HELLO may announce: a DEVICE_STATE body (u64 epoch, then the state)
 * fits one record (RECORD_BODY_MAX, dom0/protocol/records.ts: 16 MiB).
 */
export const DEVICE_STATE_BYTES_MAX = 16 * 2 ** 20 - 8;

/**
 * A Xen checkpoint's device state (its skeleton: libxc's records without page data) grows
 * with the pfn space — a save's first checkpoint lists every pfn, 8 octets each before
 * deflate (about 1.5 after, measured with a PVH guest's 1,044,480 pfns: 1,581,210 octets).
 */
export const XEN_DEVICE_STATE_BYTES_BASE = 2 ** 20;
export const XEN_DEVICE_STATE_BYTES_PER_PAGE = 4;

/** Device state a simulated domain announces: its JSON is a few hundred bytes. */
export const SIM_DEVICE_STATE_BYTES_MAX = 64 * 2 ** 10;

/**
 * Output-triggered checkpoints (`protect --trigger output`): the bound on the guest's paused
 * share of time that early checkpoints respect (--max-pause-share; the timer's own checkpoints
 * are not held back by it). 10 %: Remus at its usual 25–50 ms interval with 1–5 ms pauses pauses
 * 2–20 %, and issue 16's target is a guest paused at most 10 % of the time.
 */
export const MAX_PAUSE_SHARE_DEFAULT = 0.1;

/**
 * The sliding window the paused share is measured over (ms): long enough to hold many
 * checkpoints (a share of one pause is meaningless), short enough that a burst of commits
 * cannot pause the guest for long (at 10 % at most 100 ms of every second).
 */
export const PAUSE_SHARE_WINDOW_MS = 1000;

/**
 * The paused share over that window at which `protect` warns that checkpoints run back to back
 * (each pause as long as the interval or longer: the interval counts from one checkpoint's start
 * to the next): the guest then runs a sliver of the time, and everything in it slows down as
 * much (the lab's emulated Xen at 200 ms: pauses of ~1.1 s, the guest paused 98 % of the time).
 * Said again only after the share fell below half of it.
 */
export const GUEST_STARVED_PAUSE_SHARE = 0.5;

/**
 * `--interval auto` (engine/adaptive-interval.ts): the shortest interval it picks (ms) — below a
 * few ms dom0's per-checkpoint work (collect, encode, a round trip) outweighs what a shorter wait
 * saves — and the default longest (`--max-loss-window`, ms): the most guest run a failover may
 * discard and the longest a held output waits with the timer alone; twice the fixed default.
 */
export const INTERVAL_AUTO_MS_MIN = 5;
export const MAX_LOSS_WINDOW_MS_DEFAULT = 100;
/** Checkpoints the interval's cost model is fitted over, and its largest step (× or ÷) per checkpoint. */
export const INTERVAL_AUTO_SAMPLES = 16;
export const INTERVAL_AUTO_STEP = 1.5;

/** Incremental pauses the next one's prediction looks back on (it takes their maximum). */
export const PAUSE_PREDICT_SAMPLES = 16;

/**
 * Longest a connection hands received records to the engine in one turn of the event loop
 * (ms); the rest waits for the next turn, with the socket paused. Well under an interval, so
 * that timers (heartbeats, checkpoints) run on time while a copy streams in.
 */
export const LINK_TURN_MS_MAX = 10;

/**
 * Allocations at least this large get a fresh mapping from glibc (bytes; M_MMAP_THRESHOLD).
 * Above the largest record, so that the MiB-sized buffers of a copy reuse heap memory the
 * process already touched instead of faulting fresh pages in (native-xc/src/malloc_tuning.cc).
 */
export const MALLOC_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024;

/** Free heap glibc keeps mapped before it returns memory to the kernel (bytes; M_TRIM_THRESHOLD). */
export const MALLOC_TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024;

/** Lease of a domain's owner key in etcd (s): a dead owner's outputs stop, and its backup may take over, after it. */
export const OWNER_LEASE_TTL_S_DEFAULT = 5;
/** Renewals of the owner lease per TTL (each one proves ownership for another TTL from when it was sent). */
export const OWNER_LEASE_RENEWALS_PER_TTL = 4;
/**
 * Rate at which this host's monotonic clock may run faster than etcd's, as a fraction: a lease
 * of T seconds proves ownership for T × (1 − this) of our own time from the renewal's send.
 */
export const OWNER_CLOCK_DRIFT_RATE_MAX = 0.01;
/**
 * Ownership is given up this long before the lease provably ends (ms): covers the owner's own
 * event-loop stalls between the instant it checks validity and the instant outputs leave.
 */
export const OWNER_LEASE_SAFETY_MARGIN_MS = 1000;

/** Backup slots one `remusdb agent` offers (each a backup service on its own port). */
export const POOL_SLOTS_DEFAULT = 2;
export const POOL_SLOTS_MAX = 16;
/** Host records read from etcd at most (a larger pool is cut there, said in the log). */
export const POOL_HOSTS_MAX = 256;
/** Longest host record accepted from etcd, bytes (another host's record is input, checked). */
export const POOL_RECORD_BYTES_MAX = 64 * 1024;
/** How often an agent republishes its record and looks at its slots, ms. */
export const POOL_TICK_MS = 500;
/** A reprotection with no session with its chosen backup for this long moves to another host, ms (default). */
export const POOL_BACKUP_PATIENCE_MS_DEFAULT = 30_000;

/**
 * How long `remusdb status` and the other quick control requests wait for their answer, and
 * how long `remusdb reprotect` waits for the backup to start protecting: it opens the domain
 * and installs the network buffer first, which took ~10 s in the emulated Xen lab's dom0.
 */
export const CONTROL_ANSWER_TIMEOUT_MS = 3000;
export const REPROTECT_START_TIMEOUT_MS = 120_000;

/**
 * The packet trace (REMUSDB_NET_TRACE, diagnostics): lines written at most, and lines buffered
 * before an append (besides one at each barrier and release).
 */
export const NET_TRACE_LINES_MAX = 200_000;
export const NET_TRACE_FLUSH_LINES = 512;

/**
 * What a backup takes in before it stops reading the link: records queued behind a commit
 * that waits (disk writes, disk check) plus disk writes not on its disk yet. Reading resumes
 * under half of it. 64 MiB is ~0.5 s of a 1 Gbit/s link; a disk that writes slower than the
 * primary sends is felt by the primary as a send backlog, which paces its copies.
 */
export const BACKUP_INTAKE_BYTES_HIGH = 64 * 2 ** 20;

/**
 * The in-kernel pgwire classifier (native-xc/src/bpf/classify_tc.h, checked against the addon's
 * `bpfClassifierConstants` when it is loaded): server ports it follows, flows in its LRU table (an
 * evicted flow comes back opaque: held), held sequence ranges remembered per flow for
 * retransmissions, and the bytes of one segment it parses (a GSO packet's 64 KiB).
 */
export const PGWIRE_KERNEL_PORTS_MAX = 8;
export const PGWIRE_KERNEL_FLOWS_DEFAULT = 16_384;
export const PGWIRE_KERNEL_FLOWS_MAX = 1 << 20;
export const PGWIRE_KERNEL_HELD_RANGES = 16;
export const PGWIRE_KERNEL_SEGMENT_BYTES = 65_536;
/**
 * How often the in-kernel pgwire classifier's exposure ring (packets that left in the kernel,
 * for the failover resets) is read besides each barrier: the backup learns of them this late
 * at most (plus its NET_EXPOSURE's trip). The ring holds 4 MiB (PGW_EXPOSURE_RING_BYTES): 58,000
 * records of 72 bytes, 5 ms of 11 million packets a second (a packet it cannot take is counted,
 * `exposureLost`, and its flow not reset).
 */
export const PGWIRE_KERNEL_EXPOSURE_DRAIN_MS = 5;
