// errors.h: one error class for the whole addon, injected from TypeScript
// (dom0/errors.ts, RemusError) so that operating errors raised in C++ carry the same
// stable codes as those raised in TypeScript. Programmer errors (wrong argument types,
// sizes, states) stay plain TypeError/RangeError: they are assertions, not outcomes.
//
// The codes come from one table (REMUS_ERROR_CODES): throw sites name an ErrCode, never a
// string, and the addon exports the table as `errorCodes` so that dom0/native.ts can check
// at load that each one is a code TypeScript knows (dom0/errors.ts, ErrorCode).
#pragma once
#include <napi.h>

#include <string>

namespace remus {

// X(enumerator, code string): every code this addon can throw. Keep in step with ErrorCode.
#define REMUS_ERROR_CODES(X)               \
  X(kBadPageRecord, "ERR_BAD_PAGE_RECORD") \
  X(kBadPageBatch, "ERR_BAD_PAGE_BATCH")   \
  X(kDirtyTracking, "ERR_DIRTY_TRACKING")  \
  X(kIo, "ERR_IO")                         \
  X(kNetbuf, "ERR_NETBUF")                 \
  X(kNoDomain, "ERR_NO_DOMAIN")            \
  X(kOutOfMemory, "ERR_OUT_OF_MEMORY")     \
  X(kXen, "ERR_XEN")

enum class ErrCode {
#define REMUS_ERROR_ENUMERATOR(name, code) name,
  REMUS_ERROR_CODES(REMUS_ERROR_ENUMERATOR)
#undef REMUS_ERROR_ENUMERATOR
};

const char* ErrCodeString(ErrCode code);
// The table's code strings, in table order (exported as `errorCodes`).
Napi::Array ErrorCodeList(Napi::Env env);

// Per-environment state (the main thread and each worker thread get their own).
struct AddonData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference slotStoreCtor;
};
AddonData* GetAddonData(Napi::Env env);

void SetErrorClass(const Napi::CallbackInfo& info);
// Throws `new RemusError(code, message)` (or a plain Error before the class is set).
void ThrowRemus(Napi::Env env, ErrCode code, const std::string& message);
// The same with RemusError's `details` (a plain Error gets them as properties).
void ThrowRemus(Napi::Env env, ErrCode code, const std::string& message, Napi::Object details);
void ThrowType(Napi::Env env, const std::string& message);
void ThrowRange(Napi::Env env, const std::string& message);

}  // namespace remus
