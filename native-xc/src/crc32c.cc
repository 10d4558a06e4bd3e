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

__attribute__((target("sse4.2"))) uint32_t Hard(uint32_t crc, const uint8_t* p, size_t n) {
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
  if (info.Length() != 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    return ThrowType(env, "crc32cPages(data: Uint8Array, out: Uint32Array)"), env.Undefined();
  auto d = info[0].As<Napi::Uint8Array>();
  auto out = info[1].As<Napi::Uint32Array>();
  if (d.ByteLength() != out.ElementLength() * kPage)
    return ThrowRange(env, "crc32cPages: data must be out.length × 4096 bytes"), env.Undefined();
  for (size_t i = 0; i < out.ElementLength(); i++) {
    const uint8_t* p = d.Data() + i * kPage;
    out[i] = ~(hasSse42 ? Hard(~0u, p, kPage) : Soft(~0u, p, kPage));
  }
  return env.Undefined();
}

}  // namespace

void InitCrc32c(Napi::Env env, Napi::Object exports) {
  BuildTable();
  __builtin_cpu_init();
  hasSse42 = __builtin_cpu_supports("sse4.2");
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("crc32cPages", Napi::Function::New(env, Crc32cPages));
}

}  // namespace remus
