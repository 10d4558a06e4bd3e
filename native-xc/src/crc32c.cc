// crc32c.cc: CRC32C (Castagnoli), the checksum of every replication record. Uses the SSE4.2
// crc32 instruction when the CPU has it (several GB/s), else a table; both give the same
// values (RFC 3720 polynomial, reflected, initial and final XOR 0xffffffff).
#include <napi.h>
#include <nmmintrin.h>

#include <cstdint>
#include <cstring>

#include "errors.h"

namespace remus {
namespace {

uint32_t table[256];

void BuildTable() {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    table[i] = c;
  }
}

uint32_t Soft(uint32_t crc, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

__attribute__((target("sse4.2"))) uint32_t HardOne(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8, n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// One crc32 instruction waits for the one before it (3 cycles of latency, 1 of throughput), so
// a single chain runs at a third of the instruction's rate. Long buffers run three chains over
// three adjacent blocks of kBlock octets and join them: a register r followed by L zero octets
// is r · x^(8L) mod P, a linear map kept as four byte tables (Shift); since the CRC is linear,
// crc(A ‖ B) = Shift(crc(A)) ^ crc_from_0(B) for |B| = kBlock.
constexpr size_t kBlock = 4096;
uint32_t shiftTable[4][256];

uint32_t Shift(uint32_t c) {
  return shiftTable[0][c & 0xff] ^ shiftTable[1][(c >> 8) & 0xff] ^ shiftTable[2][(c >> 16) & 0xff] ^
         shiftTable[3][c >> 24];
}

void BuildShiftTable() {
  static const uint8_t zeros[kBlock] = {};
  uint32_t basis[32];  // the map's image of each register bit: kBlock zero octets after it
  for (int i = 0; i < 32; i++) basis[i] = Soft(1u << i, zeros, kBlock);
  for (int k = 0; k < 4; k++) {
    for (uint32_t b = 0; b < 256; b++) {
      uint32_t v = 0;
      for (int i = 0; i < 8; i++)
        if (b & (1u << i)) v ^= basis[8 * k + i];
      shiftTable[k][b] = v;
    }
  }
}

// Runs chain i of c over the n octets at p + i·n (i = 0, 1, 2), the three interleaved; n is a
// multiple of 8 (kBlock, a page).
__attribute__((target("sse4.2"))) void ThreeChains(const uint8_t* p, size_t n, uint64_t c[3]) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t w[3];
    for (int k = 0; k < 3; k++) std::memcpy(&w[k], p + k * n + i, 8);
    for (int k = 0; k < 3; k++) c[k] = _mm_crc32_u64(c[k], w[k]);
  }
}

__attribute__((target("sse4.2"))) uint32_t Hard(uint32_t crc, const uint8_t* p, size_t n) {
  for (; n >= 3 * kBlock; p += 3 * kBlock, n -= 3 * kBlock) {
    uint64_t c[3] = {crc, 0, 0};
    ThreeChains(p, kBlock, c);
    crc = Shift(Shift(static_cast<uint32_t>(c[0])) ^ static_cast<uint32_t>(c[1])) ^ static_cast<uint32_t>(c[2]);
  }
  return HardOne(crc, p, n);
}

bool hasSse42 = false;

// crc32c(data: Uint8Array, seed = 0) -> u32; seed chains partial checksums.
Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    return ThrowType(env, "crc32c(data: Uint8Array, seed?: number)"), env.Undefined();
  auto d = info[0].As<Napi::Uint8Array>();
  uint32_t seed = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  uint32_t crc = ~seed;
  crc = hasSse42 ? Hard(crc, d.Data(), d.ByteLength()) : Soft(crc, d.Data(), d.ByteLength());
  return Napi::Number::New(env, static_cast<double>(~crc));
}

// crc32cPages(data: Uint8Array, out: Uint32Array): out[i] = crc32c of data's 4 KiB page i;
// data.byteLength must be out.length × 4096. One call per batch instead of one per page.
Napi::Value Crc32cPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  constexpr size_t kPage = 4096;
  auto isArray = [&](int i, napi_typedarray_type t) {
    return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == t;
  };
  if (info.Length() != 2 || !isArray(0, napi_uint8_array) || !isArray(1, napi_uint32_array))
    return ThrowType(env, "crc32cPages(data: Uint8Array, out: Uint32Array)"), env.Undefined();
  auto d = info[0].As<Napi::Uint8Array>();
  auto out = info[1].As<Napi::Uint32Array>();
  if (d.ByteLength() != out.ElementLength() * kPage)
    return ThrowRange(env, "crc32cPages: data must be out.length × 4096 bytes"), env.Undefined();
  size_t i = 0;
  for (; hasSse42 && i + 3 <= out.ElementLength(); i += 3) {  // three pages at once, each its own chain
    uint64_t c[3] = {~0u, ~0u, ~0u};
    ThreeChains(d.Data() + i * kPage, kPage, c);
    for (int k = 0; k < 3; k++) out[i + k] = ~static_cast<uint32_t>(c[k]);
  }
  for (; i < out.ElementLength(); i++) {
    const uint8_t* p = d.Data() + i * kPage;
    out[i] = ~(hasSse42 ? Hard(~0u, p, kPage) : Soft(~0u, p, kPage));
  }
  return env.Undefined();
}

}  // namespace

void InitCrc32c(Napi::Env env, Napi::Object exports) {
  BuildTable();
  BuildShiftTable();
  __builtin_cpu_init();
  hasSse42 = __builtin_cpu_supports("sse4.2");
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("crc32cPages", Napi::Function::New(env, Crc32cPages));
}

}  // namespace remus
