// CPU kernels of the feature-cache ops (schemas in ../ops.cpp, reference in automl_tl/ops.py).
//
// Every op is a single pass over rows, parallel over rows with at::parallel_for once a call
// has enough work to pay for waking the thread pool. The per-row inner loops have an x86
// AVX2+F16C version chosen at run time (function-level target attributes, so the library
// still loads on any x86-64 CPU and is built with no -march flag) and a portable scalar one.
// gather_dequantize reads rows in random order from a store larger than the caches; each
// row loop prefetches the next row it will read, overlapping that latency with conversion.
// (Measured here: AVX-512 conversion and non-temporal stores gave nothing; output store
// bandwidth bounds the fp16 path.)
//
// Results equal the reference bit for bit: the same float32 operations in the same order
// (x.to(float16) is round-to-nearest-even; int8 uses scale = max|row| / 127,
// q = round_half_even(x * (1 / scale)) clamped to [-127, 127]; gather multiplies the
// float32 value by the float32 scale once).

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define AUTOML_TL_X86_SIMD 1
#include <immintrin.h>
#define AUTOML_TL_AVX2 __attribute__((target("avx2,f16c")))
#endif

namespace automl_tl {
namespace {

// Elements of work below which a call stays on the calling thread: waking the pool costs
// a few microseconds, about what converting 32k elements costs on one core.
constexpr int64_t kGrainElements = 32768;

int64_t grain_rows(int64_t row_len) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_len));
}

// ------------------------------------------------------------------ scalar row loops
// Every row loop takes `next`: the stored row the caller will read after this one (or
// nullptr). The loops prefetch one cache line of it per cache line of this row they read, so
// the random-access read of the next row is in flight while this one converts.
constexpr int64_t kLine = 64;

template <typename T>
void row_to_float_scalar(const T* src, float* dst, int64_t n, const float* scale,
                         const void* next) {
  const float s = scale == nullptr ? 1.f : *scale;  // x * 1.0f is exact
  constexpr int64_t step = kLine / sizeof(T);
  for (int64_t j0 = 0; j0 < n; j0 += step) {
    if (next != nullptr) __builtin_prefetch(static_cast<const T*>(next) + j0);
    const int64_t j1 = std::min(n, j0 + step);
    for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<float>(src[j]) * s;
  }
}

void row_to_half_scalar(const float* src, c10::Half* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = c10::Half(src[j]);  // round to nearest even
}

float row_absmax_scalar(const float* src, int64_t n) {
  float m = 0.f;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, std::fabs(src[j]));
  return m;
}

int8_t quantize_one(float v, float inv) {
  // std::nearbyint rounds half to even in the default rounding mode, as torch.round does.
  const float q = std::nearbyint(v * inv);
  return static_cast<int8_t>(std::min(127.f, std::max(-127.f, q)));
}

void row_to_int8_scalar(const float* src, int8_t* dst, int64_t n, float inv) {
  for (int64_t j = 0; j < n; ++j) dst[j] = quantize_one(src[j], inv);
}

// ------------------------------------------------------------------ AVX2 + F16C row loops
#ifdef AUTOML_TL_X86_SIMD
AUTOML_TL_AVX2 void half_to_float_avx2(const c10::Half* src, float* dst, int64_t n,
                                       const float* scale, const void* next) {
  const __m256 s = _mm256_set1_ps(scale == nullptr ? 1.f : *scale);  // x * 1.0f is exact
  const auto* in = reinterpret_cast<const __m128i*>(src);
  const char* pf = static_cast<const char*>(next);
  int64_t j = 0;
  for (; j + 32 <= n; j += 32, in += 4) {  // 32 halves: one 64-byte line in, two out
    if (pf != nullptr) _mm_prefetch(pf + 2 * j, _MM_HINT_T0);
    _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(in)), s));
    _mm256_storeu_ps(dst + j + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(in + 1)), s));
    _mm256_storeu_ps(dst + j + 16, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(in + 2)), s));
    _mm256_storeu_ps(dst + j + 24, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(in + 3)), s));
  }
  row_to_float_scalar(src + j, dst + j, n - j, scale, nullptr);
}

AUTOML_TL_AVX2 void int8_to_float_avx2(const int8_t* src, float* dst, int64_t n,
                                       const float* scale, const void* next) {
  const __m256 s = _mm256_set1_ps(scale == nullptr ? 1.f : *scale);
  const char* pf = static_cast<const char*>(next);
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {  // 64 bytes: one line in, four out
    if (pf != nullptr) _mm_prefetch(pf + j, _MM_HINT_T0);
    for (int64_t k = j; k < j + 64; k += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
      const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
      _mm256_storeu_ps(dst + k, _mm256_mul_ps(lo, s));
      _mm256_storeu_ps(dst + k + 8, _mm256_mul_ps(hi, s));
    }
  }
  row_to_float_scalar(src + j, dst + j, n - j, scale, nullptr);
}

AUTOML_TL_AVX2 void float_to_half_avx2(const float* src, c10::Half* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT);
    const __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(src + j + 8), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j + 8), b);
  }
  row_to_half_scalar(src + j, dst + j, n - j);
}

AUTOML_TL_AVX2 float absmax_avx2(const float* src, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(src + j), abs_mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(src + j + 8), abs_mask));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = row_absmax_scalar(src + j, n - j);
  for (float v : lanes) m = std::max(m, v);
  return m;
}

AUTOML_TL_AVX2 void float_to_int8_avx2(const float* src, int8_t* dst, int64_t n, float inv) {
  const __m256 s = _mm256_set1_ps(inv);
  const __m256 hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
  // packs_epi32 / packs_epi16 interleave the two 128-bit lanes; this puts them back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(src + j + 8 * k), s), kRound);
      q[k] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
    }
    const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                         _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        _mm256_permutevar8x32_epi32(w, order));
  }
  row_to_int8_scalar(src + j, dst + j, n - j, inv);
}

bool cpu_has_avx2_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}
#endif  // AUTOML_TL_X86_SIMD

// ------------------------------------------------------------------ run-time choice
struct RowKernels {
  void (*half_to_float)(const c10::Half*, float*, int64_t, const float*, const void*) =
      row_to_float_scalar<c10::Half>;
  void (*int8_to_float)(const int8_t*, float*, int64_t, const float*, const void*) =
      row_to_float_scalar<int8_t>;
  void (*float_to_half)(const float*, c10::Half*, int64_t) = row_to_half_scalar;
  float (*absmax)(const float*, int64_t) = row_absmax_scalar;
  void (*float_to_int8)(const float*, int8_t*, int64_t, float) = row_to_int8_scalar;
};

const RowKernels& row_kernels() {
  static const RowKernels kernels = [] {
    RowKernels k;
#ifdef AUTOML_TL_X86_SIMD
    if (cpu_has_avx2_f16c()) {
      k.half_to_float = half_to_float_avx2;
      k.int8_to_float = int8_to_float_avx2;
      k.float_to_half = float_to_half_avx2;
      k.absmax = absmax_avx2;
      k.float_to_int8 = float_to_int8_avx2;
    }
#endif
    return k;
  }();
  return kernels;
}

// ------------------------------------------------------------------ validation, allocation
// Outputs are always new dense CPU tensors: allocating them directly, not through at::empty
// and the dispatcher, trims the fixed per-call cost that dominates small training batches.
at::Tensor new_cpu(at::IntArrayRef size, at::ScalarType dtype) {
  return at::Tensor(at::detail::empty_cpu(size, dtype, /*pin_memory=*/false, std::nullopt));
}

// ------------------------------------------------------------------ ops
at::Tensor quantize_fp16_cpu(const at::Tensor& x_in) {
  check_float_matrix(x_in, "automl_tl::quantize_fp16");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = new_cpu({x.size(0), x.size(1)}, at::kHalf);
  const int64_t n = x.numel();
  if (n == 0) return out;
  const float* src = x.const_data_ptr<float>();
  auto* dst = out.mutable_data_ptr<c10::Half>();
  const auto& k = row_kernels();
  // Element-wise: split the flat buffer, not rows, so one long row parallelises too.
  at::parallel_for(0, n, kGrainElements, [&](int64_t begin, int64_t end) {
    k.float_to_half(src + begin, dst + begin, end - begin);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_int8_cpu(const at::Tensor& x_in) {
  check_float_matrix(x_in, "automl_tl::quantize_int8");
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), d = x.size(1);
  at::Tensor q = new_cpu({rows, d}, at::kChar);
  at::Tensor scale = new_cpu({rows}, at::kFloat);
  if (rows == 0) return {q, scale};
  const float* src = x.const_data_ptr<float>();
  int8_t* qd = q.mutable_data_ptr<int8_t>();
  float* sd = scale.mutable_data_ptr<float>();
  const auto& k = row_kernels();
  at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * d;
      const float s = k.absmax(row, d) / 127.f;
      const float inv = s > 0.f ? 1.f / s : 0.f;  // a zero row: scale 0, q 0
      sd[r] = s;
      k.float_to_int8(row, qd + r * d, d, inv);
    }
  });
  return {q, scale};
}

// Range-checks every index before any row is touched: a bad index is an error, never a read.
template <typename I>
void check_index_range(const I* idx, int64_t count, int64_t rows) {
  for (int64_t b = 0; b < count; ++b) {
    const int64_t i = static_cast<int64_t>(idx[b]);
    TORCH_CHECK_INDEX(i >= 0 && i < rows, "automl_tl::gather_dequantize: index[", b, "] = ", i,
                      " is out of range for a store of ", rows, " rows (valid: 0..", rows - 1,
                      ")");
  }
}

template <typename T, typename I, typename RowFn>
void gather_rows(const T* values, int64_t row_stride, const float* scales, const I* idx,
                 float* out, int64_t count, int64_t d, RowFn row_fn) {
  at::parallel_for(0, count, grain_rows(d), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i = static_cast<int64_t>(idx[b]);
      const T* next = b + 1 < end ? values + static_cast<int64_t>(idx[b + 1]) * row_stride
                                  : nullptr;
      row_fn(values + i * row_stride, out + b * d, d, scales == nullptr ? nullptr : scales + i,
             next);
    }
  });
}

template <typename I>
void gather_dispatch(const at::Tensor& values, const float* scales, const I* idx, float* out,
                     int64_t count) {
  const int64_t d = values.size(1), stride = values.stride(0);
  const auto& k = row_kernels();
  switch (values.scalar_type()) {
    case at::kHalf:
      gather_rows(values.const_data_ptr<c10::Half>(), stride, scales, idx, out, count, d,
                  k.half_to_float);
      break;
    case at::kChar:
      gather_rows(values.const_data_ptr<int8_t>(), stride, scales, idx, out, count, d,
                  k.int8_to_float);
      break;
    default:  // kFloat, checked by the caller; plain loops, auto-vectorised at -O3
      gather_rows(values.const_data_ptr<float>(), stride, scales, idx, out, count, d,
                  row_to_float_scalar<float>);
  }
}

at::Tensor gather_dequantize_cpu(const at::Tensor& values_in,
                                 const std::optional<at::Tensor>& scales_in,
                                 const at::Tensor& index_in) {
  const GatherArgs args = check_gather_args(values_in, scales_in, index_in);
  const at::Tensor &values = args.values, &index = args.index, &scales = args.scales;
  const int64_t rows = args.rows, d = args.d;
  const auto it = index.scalar_type();
  const float* sp = scales.defined() ? scales.const_data_ptr<float>() : nullptr;

  const int64_t count = index.numel();
  at::Tensor out = new_cpu({count, d}, at::kFloat);
  if (count == 0) return out;
  float* dst = out.mutable_data_ptr<float>();
  if (it == at::kLong) {
    const int64_t* idx = index.const_data_ptr<int64_t>();
    check_index_range(idx, count, rows);
    if (d > 0) gather_dispatch(values, sp, idx, dst, count);
  } else {
    const int32_t* idx = index.const_data_ptr<int32_t>();
    check_index_range(idx, count, rows);
    if (d > 0) gather_dispatch(values, sp, idx, dst, count);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(automl_tl, CPU, m) {
  m.impl("quantize_fp16", &quantize_fp16_cpu);
  m.impl("quantize_int8", &quantize_int8_cpu);
  m.impl("gather_dequantize", &gather_dequantize_cpu);
}

}  // namespace automl_tl
