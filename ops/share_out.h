// share_out: a loop over [0, size) shared out among OpenMP threads, for the elementwise
// operators of this library (each element's result does not depend on which thread
// computes it, so any thread count gives the same bits).
#ifndef STN_OPS_SHARE_OUT_H_
#define STN_OPS_SHARE_OUT_H_

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

// body(begin, end) over [0, size): on this thread below ``parallel_from`` elements (too few
// to be worth waking threads), else in chunks of whole cache lines (16 floats), one a thread.
template <typename Body>
void share_out(int64_t size, int64_t parallel_from, Body body) {
  if (size < parallel_from) {
    body(0, size);
    return;
  }
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
    const int64_t threads = 1, thread = 0;
#endif
    const int64_t chunk = ((size + threads - 1) / threads + 15) / 16 * 16;
    const int64_t begin = thread * chunk < size ? thread * chunk : size;
    const int64_t end = begin + chunk < size ? begin + chunk : size;
    body(begin, end);
  }
}

#endif  // STN_OPS_SHARE_OUT_H_
