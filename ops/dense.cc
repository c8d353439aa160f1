// stn_input_dense: a dense layer on the network's input, y = x W^T + b (FullyConnected,
// flatten=True), whose input needs no gradient: the first layer of the FCN baseline, which
// reads the whole image (42 x 42 = 1764 inputs on RTS).
//
// MXNet 1.9.1's oneDNN computes that product (64 x 1764 by 1764 x w) with its AVX-512 gemm
// at about 55% of a Zen 4 core's peak, and the whole FCN's step is half this layer. Here
// each output is a dot product of two contiguous rows, a tile of them in registers at once
// (no copy of the weight into another layout): 0.36 -> 0.22 ms on that product, one Zen 4
// thread. The weight's gradient, dy^T x, is a weighted sum of x's rows for each unit, and
// the bias's the column sums of dy. Loops for AVX-512 and for AVX2 with FMA, the CPU choosing when the library
// loads (plain C++ on others). The same function as FullyConnected; the sums are taken in
// another order (the last bits differ, as between oneDNN's own kernels on two CPUs), and an
// output element is always summed by one thread, so any thread count gives the same bits.
// Where the input needs a gradient (a layer after a transformer, on fewer inputs), oneDNN's
// layer is as fast or faster, so there is no such variant.
//
//   inputs: x (N, ...) flattened to (N, K), weight (num_hidden, K), bias (num_hidden)
//   output: y (N, num_hidden)               attrs: num_hidden; act_type=relu: y = relu(...)
//   backward: d weight, d bias; d x is not written (net.InputDense passes x through
//   BlockGrad, whose backward pass drops it)
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
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

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
typedef __m512 V;
const int64_t kLanes = 16;
const int kDotM = 4, kDotN = 5, kWeightN = 8, kWeightK = 2;   // tiles: 20 and 16 accumulators
inline V zero() { return _mm512_setzero_ps(); }
inline V load(const float* p) { return _mm512_loadu_ps(p); }
inline V set1(float v) { return _mm512_set1_ps(v); }
inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline float sum(V v) { return _mm512_reduce_add_ps(v); }
#include "dense_kernels.h"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef __m256 V;
const int64_t kLanes = 8;
const int kDotM = 3, kDotN = 3, kWeightN = 6, kWeightK = 2;   // 9 and 12 of 16 registers
inline V zero() { return _mm256_setzero_ps(); }
inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline V set1(float v) { return _mm256_set1_ps(v); }
inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline float sum(V v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}
#include "dense_kernels.h"
}  // namespace avx2
#pragma GCC pop_options

namespace plain {   // any x86-64 CPU
typedef float V;
const int64_t kLanes = 1;
const int kDotM = 2, kDotN = 2, kWeightN = 2, kWeightK = 2;
inline V zero() { return 0.f; }
inline V load(const float* p) { return *p; }
inline V set1(float v) { return v; }
inline V fmadd(V a, V b, V c) { return a * b + c; }
inline void store(float* p, V v) { *p = v; }
inline float sum(V v) { return v; }
#include "dense_kernels.h"
}  // namespace plain

enum class Isa { kAvx512, kAvx2, kPlain };

// The CPU's widest loops, or those $STN_DENSE_ISA names (avx512, avx2, plain: for tests
// and comparisons; a set this CPU lacks is not taken).
Isa isa() {
  static const Isa chosen = [] {
    const bool avx512 = __builtin_cpu_supports("avx512f");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const char* asked = std::getenv("STN_DENSE_ISA");
    const std::string name = asked ? asked : "";
    if (name == "plain") return Isa::kPlain;
    if (name == "avx2" && avx2) return Isa::kAvx2;
    return avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kPlain;
  }();
  return chosen;
}

// Threads are woken only for a product of at least this many multiply-adds.
const int64_t kParallelFrom = 1 << 22;

void forward_product(const float* x, const float* w, const float* b, float* out, int64_t M,
                     int64_t N, int64_t K) {
  share_out(N, M * N * K >= kParallelFrom ? 0 : N + 1, [&](int64_t begin, int64_t end) {
    switch (isa()) {
      case Isa::kAvx512: avx512::forward_columns(x, w, b, out, M, N, K, begin, end); break;
      case Isa::kAvx2: avx2::forward_columns(x, w, b, out, M, N, K, begin, end); break;
      default: plain::forward_columns(x, w, b, out, M, N, K, begin, end);
    }
  });
}

// d weight (N x K): d weight[n][k] = sum_m dy[m][n] x[m][k]
void weight_gradient(const float* dy, const float* x, float* dw, int64_t M, int64_t N,
                     int64_t K) {
  share_out(K, M * N * K >= kParallelFrom ? 0 : K + 1, [&](int64_t begin, int64_t end) {
    switch (isa()) {
      case Isa::kAvx512: avx512::weight_columns(dy, x, dw, M, N, K, begin, end); break;
      case Isa::kAvx2: avx2::weight_columns(dy, x, dw, M, N, K, begin, end); break;
      default: plain::weight_columns(dy, x, dw, M, N, K, begin, end);
    }
  });
}

// (N, K) of an input of any rank, flattened as FullyConnected flattens it
void flat(const MXTensor& x, int64_t* rows, int64_t* cols) {
  *rows = x.shape[0];
  *cols = x.shape[0] ? x.size() / x.shape[0] : 0;
}

// Whether the layer's ReLU comes with it (act_type=relu), as Activation computes it.
bool with_relu(const Attrs& attrs) {
  auto it = attrs.find("act_type");
  return it != attrs.end() && it->second == "relu";
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  int64_t M, K;
  flat((*inputs)[0], &M, &K);
  const int64_t N = (*inputs)[1].shape[0];
  float* y = (*outputs)[0].data<float>();
  forward_product((*inputs)[0].data<float>(), (*inputs)[1].data<float>(),
                  (*inputs)[2].data<float>(), y, M, N, K);
  if (with_relu(attrs))
    for (int64_t i = 0; i < M * N; ++i) y[i] = y[i] > 0.f ? y[i] : 0.f;
  return MX_SUCCESS;
}

// inputs: d y, x, weight, bias, y; outputs: d x (not written), d weight, d bias
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  int64_t M, K;
  flat((*inputs)[1], &M, &K);
  const int64_t N = (*inputs)[2].shape[0];
  const float* dy = (*inputs)[0].data<float>();
  if (with_relu(attrs)) {   // the gradient before the ReLU: zero where it output zero
    const float* y = (*inputs)[4].data<float>();
    float* dz = static_cast<float*>(res.alloc_cpu(static_cast<int>(sizeof(float) * M * N)));
    for (int64_t i = 0; i < M * N; ++i) dz[i] = y[i] > 0.f ? dy[i] : 0.f;
    dy = dz;
  }
  weight_gradient(dy, (*inputs)[1].data<float>(), (*outputs)[1].data<float>(), M, N, K);
  float* db = (*outputs)[2].data<float>();
  for (int64_t n = 0; n < N; ++n) {
    float total = 0.f;
    for (int64_t m = 0; m < M; ++m) total += dy[m * N + n];
    db[n] = total;
  }
  return MX_SUCCESS;
}

bool read_units(const Attrs& attrs, int64_t* units) {
  auto it = attrs.find("num_hidden");
  if (it == attrs.end()) return false;
  try {
    *units = std::stoll(it->second);
  } catch (...) {
    return false;
  }
  return *units > 0;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int64_t units;
  if (!read_units(attrs, &units)) {
    MX_ERROR_MSG << "stn_input_dense: num_hidden must be a whole number of units >= 1";
    return MX_FAIL;
  }
  auto act = attrs.find("act_type");
  if (act != attrs.end() && act->second != "relu") {
    MX_ERROR_MSG << "stn_input_dense: act_type must be relu (or not given), not " << act->second;
    return MX_FAIL;
  }
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_only(*in_types, out_types, "stn_input_dense: x, weight and bias must be float32");
}

// x (N, ...) -> y (N, num_hidden); the weight's shape (num_hidden, K) follows from x's, as
// FullyConnected's does (a Gluon layer's in_units may wait for the first batch). A size
// not known yet comes as 0 or -1.
bool known(unsigned int size) { return size != 0 && size != static_cast<unsigned int>(-1); }

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  int64_t units;
  read_units(attrs, &units);
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  if (x.size() < 2) {
    MX_ERROR_MSG << "stn_input_dense: x must have a batch axis and at least one more";
    return MX_FAIL;
  }
  unsigned int features = 1;
  for (size_t d = 1; d < x.size(); ++d) features = known(x[d]) ? features * x[d] : 0;
  std::vector<unsigned int>& w = (*in_shapes)[1];
  const unsigned int inputs = w.size() == 2 && known(w[1]) ? w[1] : 0;
  if (features && inputs && features != inputs) {
    MX_ERROR_MSG << "stn_input_dense: the weight takes " << inputs << " inputs, x has " << features;
    return MX_FAIL;
  }
  w = {static_cast<unsigned int>(units), features ? features : inputs};
  (*in_shapes)[2] = {static_cast<unsigned int>(units)};
  (*out_shapes)[0] = {x[0], static_cast<unsigned int>(units)};
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(stn_input_dense)
.setForward(forward, "cpu")
.setBackward(backward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);
