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

void ThrowRemus(Napi::Env env, const char* code, const std::string& message) {
  AddonData* data = GetAddonData(env);
  if (data->errorClass.IsEmpty()) {
    Napi::Error e = Napi::Error::New(env, message);
    e.Set("code", Napi::String::New(env, code));
    e.ThrowAsJavaScriptException();
    return;
  }
  Napi::Value err =
      data->errorClass.New({Napi::String::New(env, code), Napi::String::New(env, message)});
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
