// The loops of stn_input_dense (ops/dense.cc) for one instruction set, included once per
// set (no include guard) inside a namespace that defines, for that set's vectors of kLanes
// floats, and the tile sizes kDotM x kDotN (forward) and kWeightN x kWeightK (vectors):
//   V zero(); V load(const float*); V set1(float); V fmadd(V a, V b, V c) (a * b + c);
//   void store(float*, V); float sum(V) (the lanes' sum)
// Every output element is computed whole by one call, so the result does not depend on
// how the calls are shared among threads.

// out[m][n] = b[n] + sum_k x[m][k] w[n][k] for m in [m0, m0 + TM), n in [n0, n0 + TN):
// TM x TN dot products of rows of length K, kLanes lanes each, the lanes summed at the end;
// the last K % kLanes products one by one.
template <int TM, int TN>
inline void dot_tile(const float* x, const float* w, const float* b, float* out,
                     int64_t K, int64_t N, int64_t m0, int64_t n0) {
  V acc[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) acc[i][j] = zero();
  const int64_t K_vec = K - K % kLanes;
  for (int64_t k = 0; k < K_vec; k += kLanes) {
    V wv[TN];
    for (int j = 0; j < TN; ++j) wv[j] = load(w + (n0 + j) * K + k);
    for (int i = 0; i < TM; ++i) {
      const V xv = load(x + (m0 + i) * K + k);
      for (int j = 0; j < TN; ++j) acc[i][j] = fmadd(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < TM; ++i) {
    for (int j = 0; j < TN; ++j) {
      float total = sum(acc[i][j]);
      for (int64_t k = K_vec; k < K; ++k) total += x[(m0 + i) * K + k] * w[(n0 + j) * K + k];
      out[(m0 + i) * N + n0 + j] = total + b[n0 + j];
    }
  }
}

// The forward pass for the output columns [n_begin, n_end): out = x w^T + b.
inline void forward_columns(const float* x, const float* w, const float* b, float* out,
                            int64_t M, int64_t N, int64_t K, int64_t n_begin, int64_t n_end) {
  int64_t n0 = n_begin;
  for (; n0 + kDotN <= n_end; n0 += kDotN) {
    int64_t m0 = 0;
    for (; m0 + kDotM <= M; m0 += kDotM) dot_tile<kDotM, kDotN>(x, w, b, out, K, N, m0, n0);
    for (; m0 < M; ++m0) dot_tile<1, kDotN>(x, w, b, out, K, N, m0, n0);
  }
  for (; n0 < n_end; ++n0) {
    int64_t m0 = 0;
    for (; m0 + kDotM <= M; m0 += kDotM) dot_tile<kDotM, 1>(x, w, b, out, K, N, m0, n0);
    for (; m0 < M; ++m0) dot_tile<1, 1>(x, w, b, out, K, N, m0, n0);
  }
}

// dw[n][k] = sum_m dy[m][n] x[m][k] for n in [n0, n0 + TN) and the TK vectors of k from
// k0: for each unit, the sum of x's rows weighted by its column of dy (the weight's gradient).
template <int TN, int TK>
inline void weight_tile(const float* dy, const float* x, float* dw, int64_t M, int64_t N,
                        int64_t K, int64_t n0, int64_t k0) {
  V acc[TN][TK];
  for (int i = 0; i < TN; ++i)
    for (int t = 0; t < TK; ++t) acc[i][t] = zero();
  for (int64_t m = 0; m < M; ++m) {
    V row[TK];
    for (int t = 0; t < TK; ++t) row[t] = load(x + m * K + k0 + t * kLanes);
    for (int i = 0; i < TN; ++i) {
      const V weight = set1(dy[m * N + n0 + i]);
      for (int t = 0; t < TK; ++t) acc[i][t] = fmadd(weight, row[t], acc[i][t]);
    }
  }
  for (int i = 0; i < TN; ++i)
    for (int t = 0; t < TK; ++t) store(dw + (n0 + i) * K + k0 + t * kLanes, acc[i][t]);
}

// The weight's gradient for the columns [k_begin, k_end) (k_begin a multiple of kLanes) of
// every unit; the columns past the last whole vector one by one.
inline void weight_columns(const float* dy, const float* x, float* dw, int64_t M, int64_t N,
                           int64_t K, int64_t k_begin, int64_t k_end) {
  const int64_t span = kWeightK * kLanes;
  const int64_t k_spans = k_begin + (k_end - k_begin) / span * span;
  int64_t n0 = 0;
  for (; n0 + kWeightN <= N; n0 += kWeightN)
    for (int64_t k0 = k_begin; k0 < k_spans; k0 += span)
      weight_tile<kWeightN, kWeightK>(dy, x, dw, M, N, K, n0, k0);
  for (; n0 < N; ++n0)
    for (int64_t k0 = k_begin; k0 < k_spans; k0 += span)
      weight_tile<1, kWeightK>(dy, x, dw, M, N, K, n0, k0);
  int64_t k0 = k_spans;
  for (; k0 + kLanes <= k_end; k0 += kLanes)
    for (int64_t n = 0; n < N; ++n) weight_tile<1, 1>(dy, x, dw, M, N, K, n, k0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = k0; k < k_end; ++k) {
      float total = 0.f;
      for (int64_t m = 0; m < M; ++m) total += dy[m * N + n] * x[m * K + k];
      dw[n * K + k] = total;
    }
  }
}
