// errors.h: one error class for the whole addon, injected from TypeScript
// (dom0/errors.ts, RemusError) so that operating errors raised in C++ carry the same
// stable codes as those raised in TypeScript. Programmer errors (wrong argument types,
// sizes, states) stay plain TypeError/RangeError: they are assertions, not outcomes.
#pragma once
#include <napi.h>

#include <string>

namespace remus {

// Per-environment state (the main thread and each worker thread get their own).
struct AddonData {
  Napi::FunctionReference errorClass;
  Napi::FunctionReference slotStoreCtor;
};
AddonData* GetAddonData(Napi::Env env);

void SetErrorClass(const Napi::CallbackInfo& info);
// Throws `new RemusError(code, message)` (or a plain Error before the class is set).
void ThrowRemus(Napi::Env env, const char* code, const std::string& message);
void ThrowType(Napi::Env env, const std::string& message);
void ThrowRange(Napi::Env env, const std::string& message);

}  // namespace remus
