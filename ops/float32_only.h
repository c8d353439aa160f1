// float32_only: the type inference every operator of this library shares. They compute in
// float32 only: each input must be float32 (else ``message``, which names the operator and
// its inputs), and each output is float32.
#ifndef STN_OPS_FLOAT32_ONLY_H_
#define STN_OPS_FLOAT32_ONLY_H_

#include <vector>

#include "lib_api.h"

inline mxnet::ext::MXReturnValue float32_only(const std::vector<int>& in_types,
                                              std::vector<int>* out_types, const char* message) {
  for (int type : in_types) {
    if (type != mxnet::ext::kFloat32) {
      MX_ERROR_MSG << message;
      return mxnet::ext::MX_FAIL;
    }
  }
  for (int& type : *out_types) type = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

#endif  // STN_OPS_FLOAT32_ONLY_H_
