// decode_fuzzer: libFuzzer harness for the page record decoder, built with AddressSanitizer
// by scripts/fuzz-native.sh. Guest memory sits between two guard areas; any byte written
// outside the pages named by well-formed record headers, or any out-of-bounds access
// (ASan), is a failure.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../src/batch_codec.h"
#include "../src/page_codec.h"

namespace {
constexpr size_t kPages = 8;
constexpr size_t kGuard = 4096;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Inputs that start with a container header of kind 0/1 also go through the unpacker.
  if (size >= remus::kBatchHeaderSize && data[0] <= remus::kBatchZstd) {
    std::vector<uint8_t> records(4 * remus::kRecordSizeMax);
    const char* what = nullptr;
    size_t n = remus::UnpackBatch(data, size, records.data(), records.size(), &what);
    if (n == remus::kUnpackFailed && what == nullptr) abort();
    if (n != remus::kUnpackFailed && n > records.size()) abort();
  }
  std::vector<uint8_t> mem(kGuard + kPages * remus::kPageSize + kGuard, 0xA5);
  uint8_t* image = mem.data() + kGuard;
  std::vector<uint8_t> before(mem);
  std::vector<uint8_t> staged(4 * remus::kPageSize);
  uint64_t stagedPfns[4];
  remus::DecodeFault fault;
  uint8_t* const segments[1] = {image};
  remus::DecodeTarget inplace{segments, kPages, kPages, nullptr, nullptr, 0};
  long n = remus::DecodeBatch(data, size, inplace, &fault);
  if (n < 0 && fault.what == nullptr) abort();
  // Pages no header names must be untouched; the guards always.
  std::vector<bool> named(kPages, false);
  for (size_t off = 0; off + remus::kRecordHeaderSize <= size;) {
    uint64_t pfn = 0;
    std::memcpy(&pfn, data + off, 8);
    if (pfn < kPages) named[pfn] = true;
    off += remus::kRecordHeaderSize + (data[off + 10] | (data[off + 11] << 8));
  }
  if (std::memcmp(mem.data(), before.data(), kGuard) != 0) abort();
  if (std::memcmp(image + kPages * remus::kPageSize, before.data() + kGuard + kPages * remus::kPageSize, kGuard) != 0) abort();
  for (size_t p = 0; p < kPages; p++) {
    size_t o = kGuard + p * remus::kPageSize;
    if (!named[p] && std::memcmp(mem.data() + o, before.data() + o, remus::kPageSize) != 0) abort();
  }
  remus::DecodeTarget stage{segments, kPages, kPages, staged.data(), stagedPfns, 4};
  remus::DecodeBatch(data, size, stage, &fault);
  return 0;
}
