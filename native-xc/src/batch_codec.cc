// batch_codec.cc: see batch_codec.h. The zstd contexts are per thread and reused (creating
// one per batch costs more than compressing a small batch). Decompression is bounded: the
// frame must declare exactly the records length, which must fit the receiver's buffer, and
// the window is capped so a hostile frame cannot make the backup allocate without limit.
#include "batch_codec.h"

#include <zstd.h>

#include <cstring>

namespace remus {
namespace {

constexpr int kWindowLogMax = 24;  // 16 MiB: larger than any batch we send

struct Contexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  Contexts() { ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, kWindowLogMax); }
  ~Contexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

Contexts& Ctx() {
  thread_local Contexts ctx;
  return ctx;
}

void PutHeader(uint8_t* out, BatchKind kind, size_t recordsLen) {
  out[0] = kind;
  out[1] = out[2] = out[3] = 0;
  for (int i = 0; i < 4; i++) out[4 + i] = static_cast<uint8_t>(recordsLen >> (8 * i));
}

}  // namespace

size_t PackBound(size_t recordsLen) { return ZSTD_compressBound(recordsLen) + recordsLen; }

size_t PackBatch(const uint8_t* records, size_t len, int level, uint8_t* out, size_t cap) {
  uint8_t* body = out + kBatchHeaderSize;
  size_t room = cap - kBatchHeaderSize;
  if (level != 0 && len > 0) {
    ZSTD_CCtx* c = Ctx().c;
    ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);  // the protocol's CRC32C covers it
    size_t n = ZSTD_compress2(c, body, room, records, len);
    if (!ZSTD_isError(n) && n < len) {
      PutHeader(out, kBatchZstd, len);
      return kBatchHeaderSize + n;
    }
  }
  std::memcpy(body, records, len);
  PutHeader(out, kBatchPlain, len);
  return kBatchHeaderSize + len;
}

size_t UnpackBatch(const uint8_t* in, size_t len, uint8_t* out, size_t cap, const char** what) {
  if (len < kBatchHeaderSize) return *what = "page batch shorter than its header", kUnpackFailed;
  if (in[1] | in[2] | in[3]) return *what = "page batch reserved octets are not zero", kUnpackFailed;
  size_t recordsLen = 0;
  for (int i = 0; i < 4; i++) recordsLen |= static_cast<size_t>(in[4 + i]) << (8 * i);
  if (recordsLen > cap) return *what = "page batch is larger than the receiver accepts", kUnpackFailed;
  const uint8_t* body = in + kBatchHeaderSize;
  size_t bodyLen = len - kBatchHeaderSize;
  switch (in[0]) {
    case kBatchPlain:
      if (bodyLen != recordsLen) return *what = "plain page batch length mismatch", kUnpackFailed;
      std::memcpy(out, body, bodyLen);
      return recordsLen;
    case kBatchZstd: {
      unsigned long long declared = ZSTD_getFrameContentSize(body, bodyLen);
      if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN ||
          declared != recordsLen)
        return *what = "zstd frame does not declare the batch length", kUnpackFailed;
      if (ZSTD_findFrameCompressedSize(body, bodyLen) != bodyLen)
        return *what = "zstd frame does not end where the batch ends", kUnpackFailed;
      ZSTD_DCtx* d = Ctx().d;
      ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
      size_t n = ZSTD_decompressDCtx(d, out, recordsLen, body, bodyLen);
      if (ZSTD_isError(n) || n != recordsLen)
        return *what = "zstd frame is corrupt", kUnpackFailed;
      return recordsLen;
    }
    default:
      return *what = "unknown page batch kind", kUnpackFailed;
  }
}

}  // namespace remus
