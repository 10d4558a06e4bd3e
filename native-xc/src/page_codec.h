// page_codec: the hot kernels of the memory path, in plain C++ (no N-API), so that the
// addon, the libFuzzer harness and any future C caller share one implementation.
// The byte layout is docs/memory-encoding.md; the TypeScript reference is
// dom0/memory/codec-ref.ts and must produce the same bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace remus {

constexpr size_t kPageSize = 4096;
constexpr size_t kRecordHeaderSize = 12;
constexpr size_t kRecordSizeMax = kRecordHeaderSize + kPageSize;
// Most segments a decode base may have (64 GiB of guest memory in 1 GiB segments, with room).
constexpr uint32_t kImageSegmentsMax = 1024;
// Encoder policy v1 thresholds (docs/memory-encoding.md, "Encoder policy v1").
constexpr size_t kTryLz4AfterXorRle = 256;
constexpr size_t kTryXorLz4Above = 1024;

enum Encoding : uint8_t {
  kRaw = 0,
  kZero = 1,
  kUnchanged = 2,
  kXorRle = 3,
  kLz4 = 4,
  kXorLz4 = 5,
  kDiskRef = 6,  // reserved (read tracking); v1 decoders reject it
  kEncodingCount = 7,
};

// A page's slot in the primary's page cache: the slot's bytes hold the version the backup
// has when `hit`; after encoding, the page is written into the slot either way.
struct SlotRef {
  uint8_t* slot;  // kPageSize bytes, never null
  bool hit;
};

// Which candidates the encoder tries (docs/memory-encoding.md, "Encoder policy v1").
enum Policy : uint8_t {
  kPolicyRaw = 0,    // --no-compress: every page RAW
  kPolicyPage = 1,   // --compressor lz4: per-page LZ4 / XOR_LZ4 candidates
  kPolicyBatch = 2,  // --compressor zstd: no LZ4 (the batch compressor does better on raw)
};

// Encodes one page as a record into `out` (capacity >= kRecordSizeMax) and stores the page
// into `ref.slot` (unless ref is null: no cache). Returns the record size.
size_t EncodePage(uint64_t pfn, const uint8_t* page, const SlotRef* ref, Policy policy,
                  uint8_t* out, Encoding* chosen);

// Canonical XOR+RLE of page^base into out. Returns its length: 0 when the pages are equal,
// kTooLong when it would need more than `cap` octets.
constexpr size_t kTooLong = ~static_cast<size_t>(0);
size_t XorRleEncode(const uint8_t* page, const uint8_t* base, uint8_t* out, size_t cap);

// Why a record was rejected. `what` is a static string; the rest locates it.
struct DecodeFault {
  const char* what = nullptr;
  size_t record = 0;     // index of the record in its batch
  size_t offset = 0;     // byte offset of the record in the batch
  uint64_t pfn = 0;
  int encoding = -1;
};

// Where decoded pages go. In-place: into image[pfn] (base = image). Staged: record i into
// staged + i*kPageSize and its pfn into stagedPfns[i] (base = image, image untouched).
// Guest memory as decode base: segments of segmentPages pages each (the last may be shorter),
// so that guests larger than one JavaScript buffer (2^32 bytes) decode in place too.
struct DecodeTarget {
  uint8_t* const* segments;
  uint64_t segmentPages;   // pages per segment (every segment but the last holds exactly this many)
  uint64_t pageCount;      // pages of all segments together
  uint8_t* staged;         // null for in-place
  uint64_t* stagedPfns;    // null for in-place
  size_t stagedCapacity;   // records that fit in staged
  uint8_t* Page(uint64_t pfn) const {
    return segments[pfn / segmentPages] + (pfn % segmentPages) * kPageSize;
  }
};

// Decodes a batch of records. Each record is checked whole before anything of it is
// written; a malformed record stops the batch (records before it are already decoded).
// Returns the number of records decoded, or -1 with *fault filled.
long DecodeBatch(const uint8_t* batch, size_t length, const DecodeTarget& target,
                 DecodeFault* fault);

const char* EncodingName(int encoding);

// The compare width XorRleEncode uses on this CPU: "avx512bw", "avx2", "sse2" or "scalar".
const char* EqualMaskName();

}  // namespace remus
