// stn_adam_update: MXNet's adam_update for several parameters in one call, vectorised.
//
// MXNet 1.9.1's adam_update (src/operator/optimizer_op-inl.h, AdamUpdateKernel) is one
// operator call per parameter, compiled for any x86-64 CPU: on the FCN's 1764 x w weight
// it takes longer than the layer's forward pass. This is the same arithmetic, in the same
// order, in float32 without fused multiply-adds (so the same bits: sqrt and division are
// exact in every instruction set), compiled for AVX-512, AVX2 and plain x86-64 with the
// CPU choosing at load time, the elements shared out among OpenMP threads (each element's
// result does not depend on which thread computes it), and every parameter in one call.
//
//   inputs: weight_0, grad_0, mean_0, var_0, weight_1, ...  (4 per parameter; mean and
//           var are updated in place)
//   outputs: weight_0, weight_1, ...  (the updated weights; the weight itself with out=)
//   attrs: num_weights, lrs and wds (a float per parameter, comma-separated), beta1,
//          beta2, epsilon, rescale_grad, clip_gradient (< 0: no clipping), each read
//          with dmlc::stof as MXNet reads adam_update's.
//
// Per element, with g = grad * rescale_grad + weight * wd (clipped to +-clip_gradient):
//   mean = beta1 * mean + (1 - beta1) * g
//   var = beta2 * var + (1 - beta2) * g * g
//   weight = weight - lr * mean / (sqrt(var) + epsilon)
//
// Built into the same library as the threaded sampler (stngluon/ops.py); optim.py uses it
// where the library loads, and adam_update otherwise.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
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

const int64_t kParallelFrom = 1 << 15;   // elements: fewer are not worth waking threads

struct Hyper {
  float beta1, beta2, epsilon, rescale_grad, clip_gradient;
};

// AdamUpdateKernel::Map for elements [begin, end) of one parameter, in place.
__attribute__((target_clones("avx512f", "avx2", "default")))
void adam_range(float* __restrict__ weight, float* __restrict__ mean, float* __restrict__ var,
                const float* __restrict__ grad, int64_t begin, int64_t end, float lr, float wd,
                Hyper h) {
  const float beta1 = h.beta1, beta2 = h.beta2, epsilon = h.epsilon;
  const float rescale_grad = h.rescale_grad, clip_gradient = h.clip_gradient;
  if (clip_gradient >= 0.f) {
    for (int64_t i = begin; i < end; ++i) {
      float g = grad[i] * rescale_grad + weight[i] * wd;
      g = g > clip_gradient ? clip_gradient : (g < -clip_gradient ? -clip_gradient : g);
      mean[i] = beta1 * mean[i] + (1.f - beta1) * g;
      var[i] = beta2 * var[i] + (1.f - beta2) * g * g;
      weight[i] = weight[i] - lr * mean[i] / (__builtin_sqrtf(var[i]) + epsilon);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      float g = grad[i] * rescale_grad + weight[i] * wd;
      mean[i] = beta1 * mean[i] + (1.f - beta1) * g;
      var[i] = beta2 * var[i] + (1.f - beta2) * g * g;
      weight[i] = weight[i] - lr * mean[i] / (__builtin_sqrtf(var[i]) + epsilon);
    }
  }
}

bool read_float(const Attrs& attrs, const char* key, float* value, float missing) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *value = missing;
    return true;
  }
  try {
    *value = dmlc::stof(it->second);
  } catch (...) {
    return false;
  }
  return true;
}

bool read_floats(const Attrs& attrs, const char* key, int count, std::vector<float>* values) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return false;
  std::stringstream list(it->second);
  std::string item;
  values->clear();
  try {
    while (std::getline(list, item, ',')) values->push_back(dmlc::stof(item));
  } catch (...) {
    return false;
  }
  return static_cast<int>(values->size()) == count;
}

int num_weights(const Attrs& attrs) {
  auto it = attrs.find("num_weights");
  return it == attrs.end() ? 0 : std::atoi(it->second.c_str());
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  const int n = num_weights(attrs);
  std::vector<float> lrs, wds;
  Hyper h;
  if (!read_floats(attrs, "lrs", n, &lrs) || !read_floats(attrs, "wds", n, &wds) ||
      !read_float(attrs, "beta1", &h.beta1, 0.9f) || !read_float(attrs, "beta2", &h.beta2, 0.999f) ||
      !read_float(attrs, "epsilon", &h.epsilon, 1e-8f) ||
      !read_float(attrs, "rescale_grad", &h.rescale_grad, 1.f) ||
      !read_float(attrs, "clip_gradient", &h.clip_gradient, -1.f)) {
    MX_ERROR_MSG << "stn_adam_update: lrs and wds need one float per parameter "
                 << "(num_weights), and the other attributes must be floats";
    return MX_FAIL;
  }
  for (int k = 0; k < n; ++k) {
    float* out = static_cast<float*>((*outputs)[k].data_ptr);
    const float* weight = static_cast<const float*>((*inputs)[4 * k].data_ptr);
    const float* grad = static_cast<const float*>((*inputs)[4 * k + 1].data_ptr);
    float* mean = static_cast<float*>((*inputs)[4 * k + 2].data_ptr);
    float* var = static_cast<float*>((*inputs)[4 * k + 3].data_ptr);
    const int64_t size = (*inputs)[4 * k].size();
    if (out != weight) std::memcpy(out, weight, sizeof(float) * size);
    share_out(size, kParallelFrom, [&](int64_t begin, int64_t end) {
      adam_range(out, mean, var, grad, begin, end, lrs[k], wds[k], h);
    });
  }
  return MX_SUCCESS;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  const int n = num_weights(attrs);
  if (n < 1) {
    MX_ERROR_MSG << "stn_adam_update: num_weights must be a whole number >= 1";
    return MX_FAIL;
  }
  *num_in = 4 * n;
  *num_out = n;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_only(*in_types, out_types, "stn_adam_update: weights, gradients and states must be float32");
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  for (size_t k = 0; k < out_shapes->size(); ++k) {
    const std::vector<unsigned int>& weight = (*in_shapes)[4 * k];
    for (int j = 1; j < 4; ++j) {
      if ((*in_shapes)[4 * k + j] != weight) {
        MX_ERROR_MSG << "stn_adam_update: parameter " << k
                     << "'s gradient, mean and var must have its weight's shape";
        return MX_FAIL;
      }
    }
    (*out_shapes)[k] = weight;
  }
  return MX_SUCCESS;
}

MXReturnValue mutate_inputs(const Attrs& attrs, std::vector<int>* indices) {
  const int n = num_weights(attrs);
  for (int k = 0; k < n; ++k) {
    indices->push_back(4 * k + 2);
    indices->push_back(4 * k + 3);
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(stn_adam_update)
.setForward(forward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape)
.setMutateInputs(mutate_inputs);
