// page_codec.cc: page record encoder (policy v1) and hostile-input decoder.
// See page_codec.h and docs/memory-encoding.md. Every length read from a record is checked
// before it is used; decoded bytes are written only inside the one target page.
#include "page_codec.h"

#include <lz4.h>

#include <cassert>
#include <cstdlib>
#include <cstring>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace remus {
namespace {

constexpr size_t kPayloadMax = kPageSize - 1;  // a candidate must beat RAW
constexpr size_t kMinZeroGap = 3;              // canonical literal split (see docs)

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

bool IsZeroPage(const uint8_t* page) {
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize; i += 64) {
    for (size_t k = 0; k < 64; k += 8) acc |= Load64(page + i + k);
    if (acc != 0) return false;
  }
  return true;
}

inline size_t PutVarint(uint8_t* out, size_t v) {
  assert(v < (1u << 14));
  if (v < 0x80) {
    out[0] = static_cast<uint8_t>(v);
    return 1;
  }
  out[0] = static_cast<uint8_t>(0x80 | (v & 0x7f));
  out[1] = static_cast<uint8_t>(v >> 7);
  return 2;
}

inline size_t VarintSize(size_t v) { return v < 0x80 ? 1 : 2; }

constexpr size_t kMaskWords = kPageSize / 64;

// Bit b of mask[w] is set when byte 64*w + b of page equals the same byte of base (a zero
// byte of the delta). The encoder's scans then run on words, not bytes. One compare covers
// 64 bytes with AVX-512BW, 32 with AVX2, 16 with SSE2; the widest the CPU has is picked once.
using EqualMaskFn = void (*)(const uint8_t* page, const uint8_t* base, uint64_t* mask);

void EqualMaskScalar(const uint8_t* page, const uint8_t* base, uint64_t* mask) {
  for (size_t w = 0; w < kMaskWords; w++) {
    uint64_t m = 0;
    for (size_t b = 0; b < 64; b++) m |= static_cast<uint64_t>(page[64 * w + b] == base[64 * w + b]) << b;
    mask[w] = m;
  }
}

#if defined(__x86_64__)
void EqualMaskSse2(const uint8_t* page, const uint8_t* base, uint64_t* mask) {
  for (size_t w = 0; w < kMaskWords; w++) {
    uint64_t m = 0;
    for (size_t k = 0; k < 4; k++) {
      const size_t at = 64 * w + 16 * k;
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(page + at));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + at));
      m |= static_cast<uint64_t>(static_cast<uint16_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(a, b)))) << (16 * k);
    }
    mask[w] = m;
  }
}

__attribute__((target("avx2"))) void EqualMaskAvx2(const uint8_t* page, const uint8_t* base, uint64_t* mask) {
  for (size_t w = 0; w < kMaskWords; w++) {
    const size_t at = 64 * w;
    __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(page + at));
    __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + at));
    __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(page + at + 32));
    __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + at + 32));
    const uint32_t lo = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a0, b0)));
    const uint32_t hi = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a1, b1)));
    mask[w] = lo | static_cast<uint64_t>(hi) << 32;
  }
}

__attribute__((target("avx512bw"))) void EqualMaskAvx512(const uint8_t* page, const uint8_t* base,
                                                         uint64_t* mask) {
  for (size_t w = 0; w < kMaskWords; w++) {
    __m512i a = _mm512_loadu_si512(page + 64 * w);
    __m512i b = _mm512_loadu_si512(base + 64 * w);
    mask[w] = _mm512_cmpeq_epi8_mask(a, b);
  }
}
#endif

struct EqualMaskImpl {
  const char* name;
  EqualMaskFn fn;
};

// The widest compare this CPU has, capped by REMUSDB_CODEC_SIMD (scalar, sse2, avx2, avx512bw)
// so that tests run every variant on one machine.
EqualMaskImpl PickEqualMask() {
  const char* cap = std::getenv("REMUSDB_CODEC_SIMD");
  const auto allowed = [cap](const char* name) { return cap == nullptr || std::strcmp(cap, name) == 0; };
  std::vector<EqualMaskImpl> widestFirst;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bw")) widestFirst.push_back({"avx512bw", EqualMaskAvx512});
  if (__builtin_cpu_supports("avx2")) widestFirst.push_back({"avx2", EqualMaskAvx2});
  widestFirst.push_back({"sse2", EqualMaskSse2});
#endif
  widestFirst.push_back({"scalar", EqualMaskScalar});
  bool capped = cap != nullptr;
  for (const EqualMaskImpl& impl : widestFirst) {
    if (capped && allowed(impl.name)) capped = false;
    if (!capped) return impl;
  }
  return widestFirst.front();  // an unknown or unsupported cap: the widest
}

const EqualMaskImpl kEqualMask = PickEqualMask();
const EqualMaskFn EqualMask = kEqualMask.fn;

// Literal coverage of the canonical XOR+RLE: bit b of literal[w] is set when byte 64*w + b
// belongs to a literal. A run of kMinZeroGap or more equal bytes is a gap; shorter runs
// between differing bytes belong to the literal around them; equal bytes before the first
// and after the last differing byte are gaps whatever their length. Returns false when the
// pages are equal (no literal at all).
bool LiteralMask(const uint64_t* equal, uint64_t* literal, size_t* first, size_t* last) {
  static_assert(kMinZeroGap == 3, "LiteralMask finds runs of three equal bytes");
  uint64_t differing = 0;  // bit w: equal[w] has a differing byte
  for (size_t w = 0; w < kMaskWords; w++) differing |= static_cast<uint64_t>(equal[w] != ~0ULL) << w;
  if (differing == 0) return false;
  uint64_t runStartsBefore = 0;  // the previous word's run starts
  for (size_t w = 0; w < kMaskWords; w++) {
    const uint64_t e = equal[w], next = w + 1 < kMaskWords ? equal[w + 1] : 0;  // past the page: unequal
    const uint64_t runStarts = e & ((e >> 1) | (next << 63)) & ((e >> 2) | (next << 62));
    const uint64_t inRun = runStarts | (runStarts << 1) | (runStarts << 2) | (runStartsBefore >> 62) |
                           (runStartsBefore >> 63);
    literal[w] = ~inRun;
    runStartsBefore = runStarts;
  }
  const size_t wf = static_cast<size_t>(__builtin_ctzll(differing));
  const size_t wl = 63 - static_cast<size_t>(__builtin_clzll(differing));
  *first = 64 * wf + static_cast<size_t>(__builtin_ctzll(~equal[wf]));
  *last = 64 * wl + 63 - static_cast<size_t>(__builtin_clzll(~equal[wl]));
  literal[wf] &= ~0ULL << (*first % 64);
  literal[wl] &= ~0ULL >> (63 - *last % 64);
  return true;
}

void XorBytes(const uint8_t* a, const uint8_t* b, uint8_t* out, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const uint64_t d = Load64(a + k) ^ Load64(b + k);
    std::memcpy(out + k, &d, 8);
  }
  for (; k < n; k++) out[k] = a[k] ^ b[k];
}

void PutHeader(uint8_t* out, uint64_t pfn, Encoding enc, size_t length) {
  assert(length <= kPageSize);
  for (int i = 0; i < 8; i++) out[i] = static_cast<uint8_t>(pfn >> (8 * i));
  out[8] = enc;
  out[9] = 0;
  out[10] = static_cast<uint8_t>(length);
  out[11] = static_cast<uint8_t>(length >> 8);
}

size_t Lz4Candidate(const uint8_t* src, uint8_t* out) {
  int n = LZ4_compress_default(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(out),
                               static_cast<int>(kPageSize), static_cast<int>(kPayloadMax));
  return n > 0 ? static_cast<size_t>(n) : 0;
}

}  // namespace

const char* EqualMaskName() { return kEqualMask.name; }

const char* EncodingName(int encoding) {
  static const char* const names[kEncodingCount] = {"RAW",     "ZERO",    "UNCHANGED", "XOR_RLE",
                                                    "LZ4",     "XOR_LZ4", "DISK_REF"};
  return encoding >= 0 && encoding < kEncodingCount ? names[encoding] : "UNKNOWN";
}

// Appends one token (gap, literal) to out; false when it would pass cap. A literal of up to
// 8 octets is stored as one 8-octet word when the page and cap leave room: the octets past
// it are overwritten by the next token, or lie past the payload's returned length.
inline bool PutToken(const uint8_t* page, const uint8_t* base, size_t gap, size_t at, size_t lit,
                     uint8_t* out, size_t* o, size_t cap) {
  if (*o + VarintSize(gap) + VarintSize(lit) + lit > cap) return false;
  *o += PutVarint(out + *o, gap);
  *o += PutVarint(out + *o, lit);
  if (lit <= 8 && at + 8 <= kPageSize && *o + 8 <= cap) {
    const uint64_t d = Load64(page + at) ^ Load64(base + at);
    std::memcpy(out + *o, &d, 8);
  } else {
    XorBytes(page + at, base + at, out + *o, lit);
  }
  *o += lit;
  return true;
}

// The tokens follow the literal mask's edges: its rising edges start literals, its falling
// edges end them (the last literal may end at the page's end).
size_t XorRleEncode(const uint8_t* page, const uint8_t* base, uint8_t* out, size_t cap) {
  uint64_t equal[kMaskWords], literal[kMaskWords];
  EqualMask(page, base, equal);
  size_t first = 0, last = 0;
  if (!LiteralMask(equal, literal, &first, &last)) return 0;
  size_t o = 0, pos = 0, start = 0;
  bool open = false;
  uint64_t before = 0;  // literal[w - 1]
  for (size_t w = first / 64; w <= last / 64; w++) {
    uint64_t edges = literal[w] ^ ((literal[w] << 1) | (before >> 63));
    before = literal[w];
    for (; edges != 0; edges &= edges - 1) {
      const size_t at = 64 * w + static_cast<size_t>(__builtin_ctzll(edges));
      open = !open;
      if (open) {
        start = at;
        continue;
      }
      if (!PutToken(page, base, start - pos, start, at - start, out, &o, cap)) return kTooLong;
      pos = at;
    }
  }
  if (open && !PutToken(page, base, start - pos, start, last + 1 - start, out, &o, cap)) return kTooLong;
  assert(o > 0);
  return o;
}

// Brings a cache slot that held `base` up to `page` after an XOR_RLE record: only the
// literal runs differ, so only they are copied (a whole-page copy would double the stores).
void PatchSlotFromXorRle(uint8_t* slot, const uint8_t* page, const uint8_t* p, size_t len) {
  size_t i = 0, pos = 0;
  while (i < len) {
    size_t zeros = p[i] & 0x7f;
    if (p[i++] & 0x80) zeros |= static_cast<size_t>(p[i++]) << 7;
    size_t lit = p[i] & 0x7f;
    if (p[i++] & 0x80) lit |= static_cast<size_t>(p[i++]) << 7;
    pos += zeros;
    std::memcpy(slot + pos, page + pos, lit);
    pos += lit;
    i += lit;
  }
}

size_t EncodePage(uint64_t pfn, const uint8_t* page, const SlotRef* ref, Policy policy,
                  uint8_t* out, Encoding* chosen) {
  uint8_t* payload = out + kRecordHeaderSize;
  Encoding enc = kRaw;
  size_t len = kPageSize;
  const bool hit = ref != nullptr && ref->hit;
  if (policy == kPolicyRaw) {
    std::memcpy(payload, page, kPageSize);
  } else if (IsZeroPage(page)) {
    enc = kZero, len = 0;
  } else {
    uint8_t scratch[kPageSize];
    size_t best = 0;
    if (hit) {
      best = XorRleEncode(page, ref->slot, payload, kPayloadMax);
      if (best == 0) {
        enc = kUnchanged, len = 0;  // no delta at all: the backup has this page
      } else if (best != kTooLong) {
        enc = kXorRle;
      } else {
        best = 0;
      }
    }
    if (enc != kUnchanged && policy == kPolicyPage) {
      if (!hit || best == 0 || best > kTryLz4AfterXorRle) {
        size_t n = Lz4Candidate(page, scratch);
        if (n != 0 && (best == 0 || n < best)) {
          std::memcpy(payload, scratch, n);
          best = n, enc = kLz4;
        }
      }
      if (hit && (best == 0 || best > kTryXorLz4Above)) {
        uint8_t delta[kPageSize];
        XorBytes(page, ref->slot, delta, kPageSize);
        size_t n = Lz4Candidate(delta, scratch);
        if (n != 0 && (best == 0 || n < best)) {
          std::memcpy(payload, scratch, n);
          best = n, enc = kXorLz4;
        }
      }
    }
    if (enc != kUnchanged) {
      if (best == 0) {
        std::memcpy(payload, page, kPageSize);
      } else {
        len = best;
      }
    }
  }
  if (ref != nullptr) {
    if (enc == kXorRle) {
      PatchSlotFromXorRle(ref->slot, page, payload, len);
    } else if (enc != kUnchanged) {
      std::memcpy(ref->slot, page, kPageSize);
    }
  }
  PutHeader(out, pfn, enc, len);
  *chosen = enc;
  return kRecordHeaderSize + len;
}

namespace {

// Reads a canonical 1- or 2-octet LEB128 varint; returns nullptr or the fault.
const char* GetVarint(const uint8_t* p, size_t len, size_t* i, size_t* v) {
  if (*i >= len) return "XOR_RLE token cut by the end of the payload";
  uint8_t b0 = p[(*i)++];
  *v = b0 & 0x7f;
  if ((b0 & 0x80) == 0) return nullptr;
  if (*i >= len) return "XOR_RLE varint cut by the end of the payload";
  uint8_t b1 = p[(*i)++];
  if (b1 & 0x80) return "XOR_RLE varint longer than 2 octets";
  if (b1 == 0) return "XOR_RLE varint not in shortest form";
  *v |= static_cast<size_t>(b1) << 7;
  return nullptr;
}

// Walks the token stream; with dst set, XORs the literals into it (after a clean check).
const char* XorRleWalk(const uint8_t* p, size_t len, uint8_t* dst, size_t* at) {
  size_t i = 0, pos = 0;
  while (i < len) {
    size_t zeros = 0, lit = 0;
    *at = i;
    if (const char* e = GetVarint(p, len, &i, &zeros)) return e;
    if (const char* e = GetVarint(p, len, &i, &lit)) return e;
    if (lit == 0) return "XOR_RLE literal of length 0";
    if (zeros > kPageSize - pos || lit > kPageSize - pos - zeros)
      return "XOR_RLE run passes the end of the page";
    if (lit > len - i) return "XOR_RLE literal cut by the end of the payload";
    pos += zeros;
    if (dst != nullptr)
      for (size_t k = 0; k < lit; k++) dst[pos + k] ^= p[i + k];
    pos += lit;
    i += lit;
  }
  return nullptr;
}

const char* Lz4Decode(const uint8_t* p, size_t len, uint8_t* dst) {
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(p), reinterpret_cast<char*>(dst),
                              static_cast<int>(len), static_cast<int>(kPageSize));
  if (n < 0) return "LZ4 block is malformed";
  if (static_cast<size_t>(n) != kPageSize) return "LZ4 block does not decode to exactly one page";
  return nullptr;
}

const char* CheckLength(int enc, size_t len) {
  switch (enc) {
    case kRaw:
      return len == kPageSize ? nullptr : "RAW payload is not one page long";
    case kZero:
    case kUnchanged:
      return len == 0 ? nullptr : "ZERO/UNCHANGED record carries a payload";
    case kXorRle:
      return len >= 2 && len < kPageSize ? nullptr : "XOR_RLE payload length out of range";
    case kLz4:
    case kXorLz4:
      return len >= 1 && len < kPageSize ? nullptr : "LZ4 payload length out of range";
    case kDiskRef:
      return "DISK_REF records need read tracking, which this stream did not negotiate";
    default:
      return "unknown page encoding";
  }
}

// Decodes one payload into dst (kPageSize bytes); base is the backup's current page.
// dst is written only after the payload proved well formed.
const char* DecodePayload(int enc, const uint8_t* p, size_t len, const uint8_t* base,
                          uint8_t* dst, size_t* at) {
  uint8_t tmp[kPageSize];
  switch (enc) {
    case kRaw:
      std::memcpy(dst, p, kPageSize);
      return nullptr;
    case kZero:
      // A page of fresh guest memory (a first copy) is zero already: reading it maps the
      // kernel's zero page, writing it would allocate and clear a page for nothing.
      if (!IsZeroPage(dst)) std::memset(dst, 0, kPageSize);
      return nullptr;
    case kUnchanged:
      if (dst != base) std::memcpy(dst, base, kPageSize);
      return nullptr;
    case kXorRle: {
      if (const char* e = XorRleWalk(p, len, nullptr, at)) return e;
      if (dst != base) std::memcpy(dst, base, kPageSize);
      XorRleWalk(p, len, dst, at);
      return nullptr;
    }
    case kLz4:
    case kXorLz4: {
      if (const char* e = Lz4Decode(p, len, tmp)) return e;
      if (enc == kLz4) {
        std::memcpy(dst, tmp, kPageSize);
      } else {
        XorBytes(base, tmp, dst, kPageSize);
      }
      return nullptr;
    }
  }
  return "unknown page encoding";
}

}  // namespace

long DecodeBatch(const uint8_t* batch, size_t length, const DecodeTarget& t, DecodeFault* fault) {
  size_t off = 0, n = 0;
  while (off < length) {
    *fault = DecodeFault{};
    fault->record = n, fault->offset = off;
    if (length - off < kRecordHeaderSize) {
      fault->what = "record header cut by the end of the batch";
      return -1;
    }
    const uint8_t* h = batch + off;
    uint64_t pfn = 0;
    for (int i = 0; i < 8; i++) pfn |= static_cast<uint64_t>(h[i]) << (8 * i);
    int enc = h[8];
    size_t len = h[10] | (static_cast<size_t>(h[11]) << 8);
    fault->pfn = pfn, fault->encoding = enc;
    const char* what = nullptr;
    if (h[9] != 0) what = "reserved octet is not zero";
    if (what == nullptr) what = CheckLength(enc, len);
    if (what == nullptr && len > length - off - kRecordHeaderSize)
      what = "payload runs past the end of the batch";
    if (what == nullptr && pfn >= t.pageCount) what = "pfn is beyond the end of guest memory";
    if (what == nullptr && t.staged != nullptr && n >= t.stagedCapacity)
      what = "more records than the staging area holds";
    if (what != nullptr) {
      fault->what = what;
      return -1;
    }
    uint8_t* page = t.Page(pfn);
    const uint8_t* base = page;
    uint8_t* dst = t.staged != nullptr ? t.staged + n * kPageSize : page;
    size_t at = 0;
    if (const char* e = DecodePayload(enc, h + kRecordHeaderSize, len, base, dst, &at)) {
      fault->what = e;
      fault->offset = off + kRecordHeaderSize + at;
      return -1;
    }
    if (t.stagedPfns != nullptr) t.stagedPfns[n] = pfn;
    off += kRecordHeaderSize + len;
    n++;
  }
  return static_cast<long>(n);
}

}  // namespace remus
