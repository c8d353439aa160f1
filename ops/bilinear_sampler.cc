// stn_bilinear_sampler: MXNet's BilinearSampler (paper eq. 5 with the bilinear kernel of
// eq. 6-7, zero padding, grids in [-1, 1] with align_corners=True), forward and backward,
// with the batch split across OpenMP threads.
//
// MXNet 1.9.1's CPU BilinearSampler is one single-threaded loop over the batch. This is the
// same loop, the same arithmetic in the same order for every image (so the same bits), with
// the images shared out among the threads: an image's output and gradients are written by
// the one thread that holds it, so no two threads touch the same memory and the result does
// not depend on the thread count.
//
//   data (N, C, H, W), grid (N, 2, H', W') -> out (N, C, H', W')
//   backward: d out -> d data (N, C, H, W), d grid (N, 2, H', W')
//
// stn_bilinear_sampler_grid_only is the same operator whose backward pass leaves d data at
// zero: for a sampler that reads the network's input, whose gradient nothing uses.
//
// Built by `make ops` against the headers the mxnet wheel ships; loaded by sampler.py with
// mx.library.load. The Python side falls back to BilinearSampler where it cannot be built.
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "float32_only.h"
#include "lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MX_FAIL;

typedef std::unordered_map<std::string, std::string> Attrs;

// The four pixels a sampling point reads, as MXNet's loops read them (zero outside the
// image), without a branch: the inside tests are single unsigned comparisons, and an index
// outside the image is moved to pixel 0 and its value then not used.
struct Corners {
  int index, x0, x1, y0, y1;   // data_index as MXNet computes it; inside tests
  float top_left_v, top_right_v, bottom_left_v, bottom_right_v;
  Corners(const float* data, int top_left_y, int top_left_x, int i_h, int i_w) {
    index = top_left_y * i_w + top_left_x;
    x0 = static_cast<unsigned>(top_left_x) < static_cast<unsigned>(i_w);
    x1 = static_cast<unsigned>(top_left_x + 1) < static_cast<unsigned>(i_w);
    y0 = static_cast<unsigned>(top_left_y) < static_cast<unsigned>(i_h);
    y1 = static_cast<unsigned>(top_left_y + 1) < static_cast<unsigned>(i_h);
    const int r0 = top_left_y * y0 * i_w, r1 = (top_left_y + 1) * y1 * i_w;
    const int c0 = top_left_x * x0, c1 = (top_left_x + 1) * x1;
    const float v00 = data[r0 + c0], v01 = data[r0 + c1];
    const float v10 = data[r1 + c0], v11 = data[r1 + c1];
    top_left_v = (x0 & y0) ? v00 : 0.f;
    top_right_v = (x1 & y0) ? v01 : 0.f;
    bottom_left_v = (x0 & y1) ? v10 : 0.f;
    bottom_right_v = (x1 & y1) ? v11 : 0.f;
  }
};

// One image of MXNet's BilinearSamplerForward (src/operator/bilinear_sampler.cc), verbatim
// arithmetic: the 1.0 literals make some products double, as there. Compiled for AVX-512,
// AVX2 and plain x86-64 (the CPU picks at load time): std::floor is one instruction on the
// first two and a call on the last; the results are the same.
__attribute__((target_clones("avx512f", "avx2", "default")))
static void forward_image(float* out, const float* data, const float* grid,
                          int o_c, int o_h, int o_w, int i_c, int i_h, int i_w) {
  typedef float DType;
  for (int c = 0; c < o_c; ++c) {
    for (int h = 0; h < o_h; ++h) {
      for (int w = 0; w < o_w; ++w) {
        const int out_index = c * o_h * o_w + h * o_w + w;
        const int grid_index = h * o_w + w;
        DType y_real = (*(grid + grid_index + o_h * o_w) + 1) * (i_h - 1) / 2;
        DType x_real = (*(grid + grid_index) + 1) * (i_w - 1) / 2;
        int top_left_y = static_cast<int>(std::floor(y_real));
        int top_left_x = static_cast<int>(std::floor(x_real));
        DType top_left_y_w = 1.0 - (y_real - top_left_y);
        DType top_left_x_w = 1.0 - (x_real - top_left_x);
        const Corners v(data + c * i_h * i_w, top_left_y, top_left_x, i_h, i_w);
        *(out + out_index) = v.top_left_v * top_left_y_w * top_left_x_w +
                             v.top_right_v * top_left_y_w * (1.0 - top_left_x_w) +
                             v.bottom_left_v * (1.0 - top_left_y_w) * top_left_x_w +
                             v.bottom_right_v * (1.0 - top_left_y_w) * (1.0 - top_left_x_w);
      }
    }
  }
}

// One image of MXNet's BilinearSamplerBackward, both gradients written (zeroed first);
// the input's left at zero unless ``input_grad``.
__attribute__((target_clones("avx512f", "avx2", "default")))
static void backward_image(float* g_input, float* grad_grid, const float* grad,
                           const float* data, const float* grid_src,
                           int o_c, int o_h, int o_w, int i_c, int i_h, int i_w,
                           bool input_grad) {
  typedef float DType;
  std::memset(g_input, 0, sizeof(float) * i_c * i_h * i_w);
  std::memset(grad_grid, 0, sizeof(float) * 2 * o_h * o_w);
  for (int h = 0; h < o_h; ++h) {
    for (int w = 0; w < o_w; ++w) {
      DType top_left_y_gw = 0.0;
      DType top_left_x_gw = 0.0;
      const int grid_src_index = h * o_w + w;
      DType y_real = (*(grid_src + grid_src_index + o_h * o_w) + 1) * (i_h - 1) / 2;
      DType x_real = (*(grid_src + grid_src_index) + 1) * (i_w - 1) / 2;
      int top_left_y = static_cast<int>(std::floor(y_real));
      int top_left_x = static_cast<int>(std::floor(x_real));
      DType top_left_y_w = 1.0 - (y_real - top_left_y);
      DType top_left_x_w = 1.0 - (x_real - top_left_x);
      for (int c = 0; c < o_c; ++c) {
        const int grad_index = c * o_h * o_w + h * o_w + w;
        const Corners v(data + c * i_h * i_w, top_left_y, top_left_x, i_h, i_w);
        const DType top_left_v = v.top_left_v, top_right_v = v.top_right_v;
        const DType bottom_left_v = v.bottom_left_v, bottom_right_v = v.bottom_right_v;
        if (input_grad) {
          float* g = g_input + c * i_h * i_w + v.index;
          if (v.x0 & v.y0) *g += *(grad + grad_index) * top_left_y_w * top_left_x_w;
          if (v.x1 & v.y0) *(g + 1) += *(grad + grad_index) * top_left_y_w * (1.0 - top_left_x_w);
          if (v.x0 & v.y1) *(g + i_w) += *(grad + grad_index) * (1.0 - top_left_y_w) * top_left_x_w;
          if (v.x1 & v.y1) *(g + i_w + 1) +=
              *(grad + grad_index) * (1.0 - top_left_y_w) * (1.0 - top_left_x_w);
        }
        top_left_y_gw -= *(grad + grad_index) * (top_right_v - bottom_right_v +
                          (top_left_v - top_right_v - bottom_left_v + bottom_right_v) *
                          top_left_x_w);
        top_left_x_gw -= *(grad + grad_index) * (bottom_left_v - bottom_right_v +
                          (top_left_v - top_right_v - bottom_left_v + bottom_right_v) *
                          top_left_y_w);
      }
      *(grad_grid + grid_src_index + o_h * o_w) += top_left_y_gw * (i_h - 1) / 2;
      *(grad_grid + grid_src_index) += top_left_x_gw * (i_w - 1) / 2;
    }
  }
}

// inputs: data, grid; outputs: out
MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  const MXTensor& data = (*inputs)[0];
  const MXTensor& grid = (*inputs)[1];
  MXTensor& out = (*outputs)[0];
  const int n = data.shape[0], i_c = data.shape[1], i_h = data.shape[2], i_w = data.shape[3];
  const int o_h = grid.shape[2], o_w = grid.shape[3];
  const float* d = static_cast<const float*>(data.data_ptr);
  const float* g = static_cast<const float*>(grid.data_ptr);
  float* o = static_cast<float*>(out.data_ptr);
#pragma omp parallel for schedule(static)
  for (int k = 0; k < n; ++k)
    forward_image(o + static_cast<size_t>(k) * i_c * o_h * o_w,
                  d + static_cast<size_t>(k) * i_c * i_h * i_w,
                  g + static_cast<size_t>(k) * 2 * o_h * o_w, i_c, o_h, o_w, i_c, i_h, i_w);
  return MX_SUCCESS;
}

// inputs: d out, data, grid, out; outputs: d data (zero unless ``input_grad``), d grid
static MXReturnValue backward_both(std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, bool input_grad) {
  const MXTensor& ograd = (*inputs)[0];
  const MXTensor& data = (*inputs)[1];
  const MXTensor& grid = (*inputs)[2];
  const int n = data.shape[0], i_c = data.shape[1], i_h = data.shape[2], i_w = data.shape[3];
  const int o_h = grid.shape[2], o_w = grid.shape[3];
  const float* og = static_cast<const float*>(ograd.data_ptr);
  const float* d = static_cast<const float*>(data.data_ptr);
  const float* g = static_cast<const float*>(grid.data_ptr);
  float* gd = static_cast<float*>((*outputs)[0].data_ptr);
  float* gg = static_cast<float*>((*outputs)[1].data_ptr);
#pragma omp parallel for schedule(static)
  for (int k = 0; k < n; ++k)
    backward_image(gd + static_cast<size_t>(k) * i_c * i_h * i_w,
                   gg + static_cast<size_t>(k) * 2 * o_h * o_w,
                   og + static_cast<size_t>(k) * i_c * o_h * o_w,
                   d + static_cast<size_t>(k) * i_c * i_h * i_w,
                   g + static_cast<size_t>(k) * 2 * o_h * o_w, i_c, o_h, o_w, i_c, i_h, i_w,
                   input_grad);
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  return backward_both(inputs, outputs, true);
}

// stn_bilinear_sampler_grid_only: for a sampler whose input needs no gradient (the network's
// images): its gradient is left at zero, which saves the scatter of every output pixel.
MXReturnValue backward_grid_only(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                 std::vector<MXTensor>* outputs, const OpResource& res) {
  return backward_both(inputs, outputs, false);
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return float32_only(*in_types, out_types, "stn_bilinear_sampler: data and grid must be float32");
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& data = (*in_shapes)[0];
  const std::vector<unsigned int>& grid = (*in_shapes)[1];
  if (data.size() != 4 || grid.size() != 4 || grid[1] != 2 || grid[0] != data[0]) {
    MX_ERROR_MSG << "stn_bilinear_sampler: data must be (N, C, H, W) and grid (N, 2, H', W')";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {data[0], data[1], grid[2], grid[3]};
  return MX_SUCCESS;
}

REGISTER_OP(stn_bilinear_sampler)
.setForward(forward, "cpu")
.setBackward(backward, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);

REGISTER_OP(stn_bilinear_sampler_grid_only)
.setForward(forward, "cpu")
.setBackward(backward_grid_only, "cpu")
.setParseAttrs(parse_attrs)
.setInferType(infer_type)
.setInferShape(infer_shape);

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
