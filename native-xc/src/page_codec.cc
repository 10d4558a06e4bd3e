// page_codec.cc: page record encoder (policy v1) and hostile-input decoder.
// See page_codec.h and docs/memory-encoding.md. Every length read from a record is checked
// before it is used; decoded bytes are written only inside the one target page.
#include "page_codec.h"

#include <lz4.h>

#include <cassert>
#include <cstring>

namespace remus {
namespace {

constexpr size_t kPayloadMax = kPageSize - 1;  // a candidate must beat RAW
constexpr size_t kMinZeroGap = 3;              // canonical literal split (see docs)

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline bool HasZeroByte(uint64_t v) {
  return ((v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL) != 0;
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

// End (exclusive) of the literal that starts at the nonzero delta byte `start`.
size_t LiteralEnd(const uint8_t* page, const uint8_t* base, size_t start) {
  size_t j = start + 1, zeros = 0;
  while (j < kPageSize) {
    if (zeros == 0 && j + 8 <= kPageSize &&
        !HasZeroByte(Load64(page + j) ^ Load64(base + j))) {
      j += 8;  // eight nonzero delta bytes: all literal
      continue;
    }
    if (page[j] == base[j]) {
      if (++zeros == kMinZeroGap) return j + 1 - kMinZeroGap;
    } else {
      zeros = 0;
    }
    j++;
  }
  return kPageSize - zeros;
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

const char* EncodingName(int encoding) {
  static const char* const names[kEncodingCount] = {"RAW",     "ZERO",    "UNCHANGED", "XOR_RLE",
                                                    "LZ4",     "XOR_LZ4", "DISK_REF"};
  return encoding >= 0 && encoding < kEncodingCount ? names[encoding] : "UNKNOWN";
}

size_t XorRleEncode(const uint8_t* page, const uint8_t* base, uint8_t* out, size_t cap) {
  size_t o = 0, pos = 0, i = 0;
  for (;;) {
    while (i + 8 <= kPageSize && Load64(page + i) == Load64(base + i)) i += 8;
    while (i < kPageSize && page[i] == base[i]) i++;
    if (i >= kPageSize) return o;
    size_t end = LiteralEnd(page, base, i);
    size_t lit = end - i;
    size_t gap = i - pos;
    if (o + VarintSize(gap) + VarintSize(lit) + lit > cap) return kTooLong;
    o += PutVarint(out + o, gap);
    o += PutVarint(out + o, lit);
    for (size_t k = 0; k < lit; k++) out[o + k] = page[i + k] ^ base[i + k];
    o += lit;
    pos = end;
    i = end;
  }
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
        for (size_t i = 0; i < kPageSize; i += 8) {
          uint64_t d = Load64(page + i) ^ Load64(ref->slot + i);
          std::memcpy(delta + i, &d, 8);
        }
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
        for (size_t i = 0; i < kPageSize; i++) dst[i] = base[i] ^ tmp[i];
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
