// codec_binding.cc: N-API surface of the page codec. One call encodes or decodes a whole
// batch (a call per page costs more than the encoding). Arguments are guarded here; which
// slot a page uses (the LRU rules) is decided in TypeScript (dom0/memory/page-cache.ts).
#include <lz4.h>
#include <zstd.h>
#include <napi.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "batch_codec.h"
#include "page_codec.h"

namespace remus {
namespace {

// Page storage of one page cache: slotCount pages of anonymous memory, zero until used.
class SlotStore : public Napi::ObjectWrap<SlotStore> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SlotStore",
                       {InstanceMethod("read", &SlotStore::Read),
                        InstanceMethod("close", &SlotStore::Close),
                        InstanceAccessor("slotCount", &SlotStore::SlotCount, nullptr),
                        InstanceAccessor("byteLength", &SlotStore::ByteLength, nullptr)});
  }

  explicit SlotStore(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SlotStore>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 1 || !info[0].IsNumber()) {
      ThrowType(env, "new SlotStore(slotCount): slotCount must be a number");
      return;
    }
    double n = info[0].As<Napi::Number>().DoubleValue();
    if (!(n >= 1 && n <= (1u << 30)) || n != static_cast<double>(static_cast<uint64_t>(n))) {
      ThrowRange(env, "SlotStore: slotCount must be an integer in [1, 2^30]");
      return;
    }
    size_t bytes = static_cast<size_t>(n) * kPageSize;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      ThrowRemus(env, ErrCode::kOutOfMemory,
                 "cannot reserve " + std::to_string(bytes) + " bytes for the page cache");
      return;
    }
    base_ = static_cast<uint8_t*>(p);
    slots_ = static_cast<size_t>(n);
  }
  ~SlotStore() override { Release(); }

  uint8_t* Slot(size_t i) const { return base_ + i * kPageSize; }
  size_t slots() const { return slots_; }
  bool open() const { return base_ != nullptr; }

 private:
  void Release() {
    if (base_ != nullptr) munmap(base_, slots_ * kPageSize);
    base_ = nullptr;
  }
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!open()) return ThrowType(env, "SlotStore.read: store is closed"), env.Undefined();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsTypedArray())
      return ThrowType(env, "SlotStore.read(slot, dst)"), env.Undefined();
    int64_t slot = info[0].As<Napi::Number>().Int64Value();
    auto dst = info[1].As<Napi::Uint8Array>();
    if (slot < 0 || static_cast<size_t>(slot) >= slots_ || dst.ByteLength() != kPageSize)
      return ThrowRange(env, "SlotStore.read: slot out of range or dst not one page"),
             env.Undefined();
    std::memcpy(dst.Data(), Slot(static_cast<size_t>(slot)), kPageSize);
    return env.Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();  // idempotent
    return info.Env().Undefined();
  }
  Napi::Value SlotCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(slots_));
  }
  Napi::Value ByteLength(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), open() ? static_cast<double>(slots_ * kPageSize) : 0);
  }

  uint8_t* base_ = nullptr;
  size_t slots_ = 0;
};

template <typename T>
bool GetArray(const Napi::Value& v, napi_typedarray_type type, T* out) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) return false;
  *out = v.As<T>();
  return true;
}

// encodeBatch(store|null, pages, pfns, slots|null, hits|null, policy, out, kinds) -> bytes
Napi::Value EncodeBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage =
      "encodeBatch(store|null, pages: Uint8Array, pfns: BigUint64Array, slots: Int32Array|null, "
      "hits: Uint8Array|null, policy: 0|1|2, out: Uint8Array, kinds: Uint8Array)";
  Napi::Uint8Array pages, out, kinds, hits;
  Napi::BigUint64Array pfns;
  Napi::Int32Array slots;
  SlotStore* store = nullptr;
  if (info.Length() != 8) return ThrowType(env, usage), env.Undefined();
  if (!info[0].IsNull()) {
    if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(GetAddonData(env)->slotStoreCtor.Value()))
      return ThrowType(env, usage), env.Undefined();
    store = SlotStore::Unwrap(info[0].As<Napi::Object>());
    if (!store->open()) return ThrowType(env, "encodeBatch: store is closed"), env.Undefined();
    if (!GetArray(info[3], napi_int32_array, &slots) || !GetArray(info[4], napi_uint8_array, &hits))
      return ThrowType(env, usage), env.Undefined();
  }
  if (!GetArray(info[1], napi_uint8_array, &pages) ||
      !GetArray(info[2], napi_biguint64_array, &pfns) || !info[5].IsNumber() ||
      !GetArray(info[6], napi_uint8_array, &out) || !GetArray(info[7], napi_uint8_array, &kinds))
    return ThrowType(env, usage), env.Undefined();
  size_t count = pfns.ElementLength();
  if (pages.ByteLength() != count * kPageSize || kinds.ElementLength() < count ||
      out.ByteLength() < count * kRecordSizeMax)
    return ThrowRange(env, "encodeBatch: pages/pfns/kinds/out sizes disagree"), env.Undefined();
  if (store != nullptr && (slots.ElementLength() != count || hits.ElementLength() != count))
    return ThrowRange(env, "encodeBatch: slots/hits must have one entry per page"),
           env.Undefined();
  for (size_t i = 0; store != nullptr && i < count; i++) {
    if (slots[i] < 0 || static_cast<size_t>(slots[i]) >= store->slots())
      return ThrowRange(env, "encodeBatch: slot out of range"), env.Undefined();
  }
  uint32_t policy = info[5].As<Napi::Number>().Uint32Value();
  if (policy > kPolicyBatch) return ThrowRange(env, "encodeBatch: unknown policy"), env.Undefined();
  size_t o = 0;
  for (size_t i = 0; i < count; i++) {
    Encoding chosen;
    SlotRef ref{nullptr, false};
    if (store != nullptr) ref = SlotRef{store->Slot(static_cast<size_t>(slots[i])), hits[i] != 0};
    o += EncodePage(pfns[i], pages.Data() + i * kPageSize, store != nullptr ? &ref : nullptr,
                    static_cast<Policy>(policy), out.Data() + o, &chosen);
    kinds[i] = chosen;
  }
  return Napi::Number::New(env, static_cast<double>(o));
}

std::string Hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// The decode base: one Uint8Array, or an array of segments (guest memory larger than one
// JavaScript buffer) where every segment but the last has the same length. Each segment is
// a whole number of pages. On failure *why says what is wrong.
bool GetImage(const Napi::Value& v, std::vector<uint8_t*>* segments, DecodeTarget* t, const char** why) {
  Napi::Uint8Array one;
  if (GetArray(v, napi_uint8_array, &one)) {
    if (one.ByteLength() % kPageSize != 0) return *why = "image is not a whole number of pages", false;
    segments->assign(1, one.Data());
    t->segmentPages = std::max<uint64_t>(1, one.ByteLength() / kPageSize);
    t->pageCount = one.ByteLength() / kPageSize;
    return true;
  }
  if (!v.IsArray()) return *why = "image is neither a Uint8Array nor an array of them", false;
  Napi::Array list = v.As<Napi::Array>();
  uint32_t n = list.Length();
  if (n == 0 || n > kImageSegmentsMax) return *why = "image has no segments, or too many", false;
  segments->resize(n);
  t->pageCount = 0;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Uint8Array seg;
    if (!GetArray(list.Get(i), napi_uint8_array, &seg)) return *why = "an image segment is not a Uint8Array", false;
    uint64_t pages = seg.ByteLength() / kPageSize;
    if (pages == 0 || seg.ByteLength() % kPageSize != 0) return *why = "an image segment is not a whole number of pages", false;
    if (i == 0) t->segmentPages = pages;
    bool fits = i + 1 < n ? pages == t->segmentPages : pages <= t->segmentPages;
    if (!fits) return *why = "image segments differ in length (only the last may be shorter)", false;
    (*segments)[i] = seg.Data();
    t->pageCount += pages;
  }
  return true;
}

// decodeBatch(records, image[, staged, stagedPfns]) -> records decoded
Napi::Value DecodeBatchFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage =
      "decodeBatch(records: Uint8Array, image: Uint8Array | Uint8Array[][, staged: Uint8Array, stagedPfns: "
      "BigUint64Array])";
  Napi::Uint8Array records, staged;
  Napi::BigUint64Array stagedPfns;
  if ((info.Length() != 2 && info.Length() != 4) || !GetArray(info[0], napi_uint8_array, &records))
    return ThrowType(env, usage), env.Undefined();
  std::vector<uint8_t*> segments;
  DecodeTarget t{nullptr, 1, 0, nullptr, nullptr, 0};
  const char* why = nullptr;
  if (!GetImage(info[1], &segments, &t, &why))
    return ThrowRange(env, std::string("decodeBatch: ") + why), env.Undefined();
  t.segments = segments.data();
  if (info.Length() == 4) {
    if (!GetArray(info[2], napi_uint8_array, &staged) ||
        !GetArray(info[3], napi_biguint64_array, &stagedPfns))
      return ThrowType(env, usage), env.Undefined();
    if (staged.ByteLength() != stagedPfns.ElementLength() * kPageSize)
      return ThrowRange(env, "decodeBatch: staged must hold one page per stagedPfns entry"),
             env.Undefined();
    t.staged = staged.Data(), t.stagedPfns = stagedPfns.Data();
    t.stagedCapacity = stagedPfns.ElementLength();
  }
  DecodeFault f;
  long n = DecodeBatch(records.Data(), records.ByteLength(), t, &f);
  if (n < 0) {
    ThrowRemus(env, ErrCode::kBadPageRecord,
               "malformed page record #" + std::to_string(f.record) + " (pfn " + Hex(f.pfn) +
                   ", encoding " + EncodingName(f.encoding) + ") at batch offset " +
                   std::to_string(f.offset) + ": " + f.what);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// lz4Compress(page) -> Buffer | null: the LZ4 candidate exactly as the encoder computes it
// (payload limit one octet under a page). Used by the TypeScript reference encoder.
Napi::Value Lz4Compress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array src;
  if (info.Length() != 1 || !GetArray(info[0], napi_uint8_array, &src) ||
      src.ByteLength() != kPageSize)
    return ThrowType(env, "lz4Compress(page: Uint8Array of 4096 bytes)"), env.Undefined();
  char dst[kPageSize];
  int n = LZ4_compress_default(reinterpret_cast<const char*>(src.Data()), dst,
                               static_cast<int>(kPageSize), static_cast<int>(kPageSize - 1));
  if (n <= 0) return env.Null();
  return Napi::Buffer<char>::Copy(env, dst, static_cast<size_t>(n));
}

// packBatch(records, level, out) -> container bytes (level 0 = plain)
Napi::Value PackBatchFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array records, out;
  if (info.Length() != 3 || !GetArray(info[0], napi_uint8_array, &records) ||
      !info[1].IsNumber() || !GetArray(info[2], napi_uint8_array, &out))
    return ThrowType(env, "packBatch(records: Uint8Array, level: number, out: Uint8Array)"),
           env.Undefined();
  int level = info[1].As<Napi::Number>().Int32Value();
  if (level < -7 || level > 19) return ThrowRange(env, "packBatch: level out of range"), env.Undefined();
  if (records.ByteLength() > 0xffffffffu ||
      out.ByteLength() < kBatchHeaderSize + PackBound(records.ByteLength()))
    return ThrowRange(env, "packBatch: out is smaller than packBound(records)"), env.Undefined();
  size_t n = PackBatch(records.Data(), records.ByteLength(), level, out.Data(), out.ByteLength());
  return Napi::Number::New(env, static_cast<double>(n));
}

// unpackBatch(container, out) -> records length; throws ERR_BAD_PAGE_BATCH
Napi::Value UnpackBatchFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array in, out;
  if (info.Length() != 2 || !GetArray(info[0], napi_uint8_array, &in) ||
      !GetArray(info[1], napi_uint8_array, &out))
    return ThrowType(env, "unpackBatch(container: Uint8Array, out: Uint8Array)"), env.Undefined();
  const char* what = nullptr;
  size_t n = UnpackBatch(in.Data(), in.ByteLength(), out.Data(), out.ByteLength(), &what);
  if (n == kUnpackFailed) {
    ThrowRemus(env, ErrCode::kBadPageBatch, std::string("malformed page batch: ") + what);
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value PackBoundFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber())
    return ThrowType(env, "packBound(recordsLength)"), env.Undefined();
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 0 && n <= 0xffffffffu)) return ThrowRange(env, "packBound: length"), env.Undefined();
  return Napi::Number::New(env, static_cast<double>(kBatchHeaderSize + PackBound(static_cast<size_t>(n))));
}

}  // namespace

void InitCodec(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = SlotStore::Define(env);
  GetAddonData(env)->slotStoreCtor = Napi::Persistent(ctor);
  exports.Set("SlotStore", ctor);
  exports.Set("encodeBatch", Napi::Function::New(env, EncodeBatch));
  exports.Set("decodeBatch", Napi::Function::New(env, DecodeBatchFn));
  exports.Set("lz4Compress", Napi::Function::New(env, Lz4Compress));
  exports.Set("lz4Version", Napi::String::New(env, LZ4_versionString()));
  exports.Set("zstdVersion", Napi::String::New(env, ZSTD_versionString()));
  exports.Set("codecSimd", Napi::String::New(env, EqualMaskName()));
  exports.Set("packBatch", Napi::Function::New(env, PackBatchFn));
  exports.Set("unpackBatch", Napi::Function::New(env, UnpackBatchFn));
  exports.Set("packBound", Napi::Function::New(env, PackBoundFn));
  Napi::Object c = Napi::Object::New(env);
  c.Set("pageSize", static_cast<double>(kPageSize));
  c.Set("recordHeaderSize", static_cast<double>(kRecordHeaderSize));
  c.Set("recordSizeMax", static_cast<double>(kRecordSizeMax));
  c.Set("imageSegmentsMax", static_cast<double>(kImageSegmentsMax));
  exports.Set("codecConstants", c);
}

}  // namespace remus
