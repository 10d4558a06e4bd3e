// errors.cc: see errors.h.
#include "errors.h"

namespace remus {
AddonData* GetAddonData(Napi::Env env) {
  auto* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) {
    data = new AddonData();
    env.SetInstanceData(data);
  }
  return data;
}

void SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsFunction()) {
    ThrowType(env, "setErrorClass(cls): cls must be a constructor");
    return;
  }
  GetAddonData(env)->errorClass = Napi::Persistent(info[0].As<Napi::Function>());
}

namespace {
constexpr const char* kCodeStrings[] = {
#define REMUS_ERROR_STRING(name, code) code,
    REMUS_ERROR_CODES(REMUS_ERROR_STRING)
#undef REMUS_ERROR_STRING
};
constexpr size_t kCodeCount = sizeof(kCodeStrings) / sizeof(kCodeStrings[0]);
}  // namespace

const char* ErrCodeString(ErrCode code) { return kCodeStrings[static_cast<size_t>(code)]; }

Napi::Array ErrorCodeList(Napi::Env env) {
  Napi::Array list = Napi::Array::New(env, kCodeCount);
  for (size_t i = 0; i < kCodeCount; i++) list.Set(static_cast<uint32_t>(i), kCodeStrings[i]);
  return list;
}

void ThrowRemus(Napi::Env env, ErrCode code, const std::string& message) {
  ThrowRemus(env, code, message, Napi::Object::New(env));
}

void ThrowRemus(Napi::Env env, ErrCode code, const std::string& message, Napi::Object details) {
  Napi::String codeString = Napi::String::New(env, ErrCodeString(code));
  AddonData* data = GetAddonData(env);
  if (data->errorClass.IsEmpty()) {
    Napi::Error e = Napi::Error::New(env, message);
    e.Set("code", codeString);
    e.Set("details", details);
    e.ThrowAsJavaScriptException();
    return;
  }
  Napi::Value err = data->errorClass.New({codeString, Napi::String::New(env, message), details});
  if (env.IsExceptionPending()) return;
  Napi::Error(env, err).ThrowAsJavaScriptException();
}

void ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

void ThrowRange(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
}

}  // namespace remus
