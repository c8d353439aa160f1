// stn_avg_pool2: 2x2 average pooling with stride 2, for nn.AvgPool2D(2, 2).
//
// net.py average-pools the transformer's output (the FCN and CNN classifiers see it halved)
// and the ST-CNN's localisation input. MXNet computes Pooling on one image plane through a
// general kernel that takes a fifth of the ST-FCN's training step. This is the same
// arithmetic in float32, in the same order (((a + b) + c) + d) / 4 over the window's rows,
// compiled for AVX-512, AVX2 and plain x86-64 with the CPU choosing at load time: the same
// bits as Pooling(kernel=(2, 2), stride=(2, 2), pool_type='avg'), forward and backward.
//
//   input: x, float32 (N, C, H, W), H and W at least 2
//   output: (N, C, H // 2, W // 2), each the mean of a 2x2 window (an odd last row or
//           column is left out, as Pooling's 'valid' convention does)
//   backward: each window's four pixels get a quarter of its output's gradient, a left-out
//             row or column zero
//
// Built into the same library as the threaded sampler (stngluon/ops.py); net.py uses it
// where the library loads, and Pooling otherwise.
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "float32_only.h"
#include "lib_api.h"
#include "share_out.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MX_FAIL;

typedef std::unordered_map<std::string, std::string> Attrs;

namespace {

// input elements: fewer are faster on one thread (a 256 x 42 x 42 batch takes 0.1 ms on one)
const int64_t kParallelFrom = 1 << 22;

// planes [begin, end) of x (each h x w) into out (each h / 2 x w / 2)
__attribute__((target_clones("avx512f", "avx2", "default")))
void pool_planes(float* __restrict__ out, const float* __restrict__ x, int64_t begin,
                 int64_t end, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t p = begin; p < end; ++p) {
    for (int64_t i = 0; i < oh; ++i) {
      const float* r0 = x + (p * h + 2 * i) * w;
      const float* r1 = r0 + w;
      float* o = out + (p * oh + i) * ow;
      for (int64_t j = 0; j < ow; ++j)
        o[j] = (((r0[2 * j] + r0[2 * j + 1]) + r1[2 * j]) + r1[2 * j + 1]) / 4.0f;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void unpool_planes(float* __restrict__ igrad, const float* __restrict__ ograd, int64_t begin,
                   int64_t end, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t p = begin; p < end; ++p) {
    float* plane = igrad + p * h * w;
    for (int64_t i = 0; i < oh; ++i) {
      const float* g = ograd + (p * oh + i) * ow;
      float* r0 = plane + 2 * i * w;
      float* r1 = r0 + w;
      for (int64_t j = 0; j < ow; ++j) {
        const float quarter = g[j] / 4.0f;
        r0[2 * j] = quarter;
        r0[2 * j + 1] = quarter;
        r1[2 * j] = quarter;
        r1[2 * j + 1] = quarter;
      }
      if (w % 2) {
        r0[w - 1] = 0.0f;
        r1[w - 1] = 0.0f;
      }
    }
    if (h % 2) std::memset(plane + (h - 1) * w, 0, sizeof(float) * w);
  }
}

// body(begin, end, h, w) over the planes of x (N, C, H, W), shared out among threads by
// whole planes where there are enough elements
template <typename Body>
void by_planes(const MXTensor& x, Body body) {
  const int64_t h = x.shape[2], w = x.shape[3], planes = x.shape[0] * x.shape[1];
  const int64_t parallel_from = planes * h * w < kParallelFrom ? planes + 1 : 1;
  share_out(planes, parallel_from, [&](int64_t begin, int64_t end) { body(begin, end, h, w); });
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  const float* x = static_cast<const float*>((*inputs)[0].data_ptr);
  float* out = static_cast<float*>((*outputs)[0].data_ptr);
  by_planes((*inputs)[0], [&](int64_t begin, int64_t end, int64_t h, int64_t w) {
    pool_planes(out, x, begin, end, h, w);
  });
  return MX_SUCCESS;
}

// inputs: the output's gradient, x, the output; outputs: x's gradient
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  const float* ograd = static_cast<const float*>((*inputs)[0].data_ptr);
  float* igrad = static_cast<float*>((*outputs)[0].data_ptr);
  by_planes((*inputs)[1], [&](int64_t begin, int64_t end, int64_t h, int64_t w) {
    unpool_planes(igrad, ograd, begin, end, h, w);
  });
  return MX_SUCCESS;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_only(*in_types, out_types, "stn_avg_pool2: the input must be float32");
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  if (x.size() != 4 || x[2] < 2 || x[3] < 2) {
    MX_ERROR_MSG << "stn_avg_pool2: the input must be (N, C, H, W) with H and W at least 2";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {x[0], x[1], x[2] / 2, x[3] / 2};
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(stn_avg_pool2)
.setForward(forward, "cpu")
.setBackward(backward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);
