// stn_standardise: (x - mean) / std in one pass, the classifier's input standardisation.
//
// net.Net standardises its classifier's input as (x - mean) / std: MXNet's _minus_scalar
// and _div_scalar, two passes compiled for any x86-64 CPU, which take about a tenth of the
// FCN's training step. This is the same arithmetic in float32 (the scalars read as doubles
// and rounded to float32, as MXNet's scalar operators do with theirs; subtraction and
// division are exact in every instruction set, so the same bits), in one pass compiled for
// AVX-512, AVX2 and plain x86-64 with the CPU choosing at load time.
//
//   input: x, float32, any shape          output: (x - mean) / std, x's shape
//   attrs: mean, std (numbers)
//   backward: x's gradient = the output's gradient / std, as _div_scalar's backward
//
// Built into the same library as the threaded sampler (stngluon/ops.py); net.py uses it
// where the library loads, and the two built-in operators otherwise.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "float32_only.h"
#include "lib_api.h"
#include "dmlc/strtonum.h"
#include "share_out.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MX_FAIL;

typedef std::unordered_map<std::string, std::string> Attrs;

namespace {

const int64_t kParallelFrom = 1 << 18;   // elements: fewer are not worth waking threads

__attribute__((target_clones("avx512f", "avx2", "default")))
void standardise_range(float* __restrict__ out, const float* __restrict__ x, int64_t begin,
                       int64_t end, float mean, float std) {
  for (int64_t i = begin; i < end; ++i) out[i] = (x[i] - mean) / std;
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void divide_range(float* __restrict__ out, const float* __restrict__ x, int64_t begin,
                  int64_t end, float std) {
  for (int64_t i = begin; i < end; ++i) out[i] = x[i] / std;
}

// The scalar attribute ``key`` as MXNet's scalar operators take theirs: read as a double,
// then rounded to float32.
bool read_scalar(const Attrs& attrs, const char* key, float* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return false;
  try {
    *value = static_cast<float>(dmlc::stod(it->second));
  } catch (...) {
    return false;
  }
  return true;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  float mean, std;
  if (!read_scalar(attrs, "mean", &mean) || !read_scalar(attrs, "std", &std)) {
    MX_ERROR_MSG << "stn_standardise: mean and std must be numbers";
    return MX_FAIL;
  }
  const float* x = static_cast<const float*>((*inputs)[0].data_ptr);
  float* out = static_cast<float*>((*outputs)[0].data_ptr);
  share_out((*inputs)[0].size(), kParallelFrom, [&](int64_t begin, int64_t end) {
    standardise_range(out, x, begin, end, mean, std);
  });
  return MX_SUCCESS;
}

// inputs: the output's gradient, x, the output; outputs: x's gradient
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  float std;
  if (!read_scalar(attrs, "std", &std)) {
    MX_ERROR_MSG << "stn_standardise: std must be a number";
    return MX_FAIL;
  }
  const float* ograd = static_cast<const float*>((*inputs)[0].data_ptr);
  float* igrad = static_cast<float*>((*outputs)[0].data_ptr);
  share_out((*inputs)[0].size(), kParallelFrom, [&](int64_t begin, int64_t end) {
    divide_range(igrad, ograd, begin, end, std);
  });
  return MX_SUCCESS;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  float value;
  if (!read_scalar(attrs, "mean", &value) || !read_scalar(attrs, "std", &value)) {
    MX_ERROR_MSG << "stn_standardise: mean and std must be numbers";
    return MX_FAIL;
  }
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_only(*in_types, out_types, "stn_standardise: the input must be float32");
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  (*out_shapes)[0] = (*in_shapes)[0];
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(stn_standardise)
.setForward(forward, "cpu")
.setBackward(backward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);
