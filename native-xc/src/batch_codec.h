// batch_codec: the page batch container (docs/memory-encoding.md, "Page batch"): a batch of
// page records, stored as is or as one zstd frame. Compressing the whole batch finds the
// redundancy between pages (database pages share structure) that per-page codecs cannot.
#pragma once
#include <cstddef>
#include <cstdint>

namespace remus {

constexpr size_t kBatchHeaderSize = 8;
enum BatchKind : uint8_t { kBatchPlain = 0, kBatchZstd = 1 };

// Packs `records` into `out` (capacity >= kBatchHeaderSize + PackBound(len)). With level
// 0 the batch is stored plain; else zstd at that level, or plain if that is not smaller.
size_t PackBound(size_t recordsLen);
size_t PackBatch(const uint8_t* records, size_t len, int level, uint8_t* out, size_t cap);

// Unpacks a container of `len` octets into `out` (capacity `cap`, the largest batch the
// receiver accepts). Returns the records length, or sets *what and returns kUnpackFailed.
constexpr size_t kUnpackFailed = ~static_cast<size_t>(0);
size_t UnpackBatch(const uint8_t* in, size_t len, uint8_t* out, size_t cap, const char** what);

}  // namespace remus
