// CUDA kernels of the feature-cache ops, mirroring cpu/cache_ops.cpp (schemas in ../ops.cpp,
// reference in automl_tl/ops.py).
//
//   quantize_fp16      grid-stride loop, __float2half_rn (round to nearest even)
//   quantize_int8      one block per row: warp-shuffle + shared-memory max|x|, then
//                      q = rint(x * (1 / scale)) clamped to [-127, 127]
//   gather_dequantize  one block per output row, threads along the row (coalesced)
//
// Arithmetic uses explicit round-to-nearest intrinsics (__fdiv_rn, __frcp_rn, __fmul_rn) so
// the results equal the CPU reference whatever nvcc's fast-math flags are.
// An out-of-range index fails a device-side assert (as torch's own index_select does on
// CUDA): checking on the host would need a device-to-host sync on every training batch.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../checks.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace automl_tl {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 65535;

int blocks_for(int64_t work_items, int64_t per_block) {
  const int64_t blocks = (work_items + per_block - 1) / per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

// Threads along a row: a multiple of the warp size, no more than the row needs.
int row_threads(int64_t d) {
  const int64_t warps = std::min<int64_t>(kThreads / kWarp, (d + kWarp - 1) / kWarp);
  return static_cast<int>(std::max<int64_t>(1, warps) * kWarp);
}

// ------------------------------------------------------------------ device helpers
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(int8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

// ------------------------------------------------------------------ kernels
__global__ void quantize_fp16_kernel(const float* __restrict__ x, __half* __restrict__ out,
                                     int64_t n) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += step)
    out[i] = __float2half_rn(x[i]);
}

__global__ void quantize_int8_kernel(const float* __restrict__ x, int8_t* __restrict__ q,
                                     float* __restrict__ scale, int64_t rows, int64_t d) {
  __shared__ float warp_maxima[kThreads / kWarp];
  __shared__ float row_inv;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int warps = blockDim.x / kWarp;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = x + r * d;
    float m = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) m = fmaxf(m, fabsf(row[j]));
    m = warp_max(m);
    if (lane == 0) warp_maxima[warp] = m;
    __syncthreads();
    if (warp == 0) {
      m = warp_max(lane < warps ? warp_maxima[lane] : 0.f);
      if (lane == 0) {
        const float s = __fdiv_rn(m, 127.f);
        scale[r] = s;
        row_inv = s > 0.f ? __frcp_rn(s) : 0.f;  // a zero row: scale 0, q 0
      }
    }
    __syncthreads();
    const float inv = row_inv;
    int8_t* out = q + r * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = rintf(__fmul_rn(row[j], inv));  // rintf: half to even
      out[j] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, v)));
    }
    __syncthreads();  // warp_maxima and row_inv are reused by the next row
  }
}

template <typename T, typename I>
__global__ void gather_dequantize_kernel(const T* __restrict__ values, int64_t row_stride,
                                         const float* __restrict__ scales,
                                         const I* __restrict__ index, float* __restrict__ out,
                                         int64_t count, int64_t rows, int64_t d) {
  for (int64_t b = blockIdx.x; b < count; b += gridDim.x) {
    const int64_t i = static_cast<int64_t>(index[b]);
    CUDA_KERNEL_ASSERT(i >= 0 && i < rows && "automl_tl::gather_dequantize: index out of range");
    const T* src = values + i * row_stride;
    float* dst = out + b * d;
    if (scales != nullptr) {
      const float s = scales[i];
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = __fmul_rn(to_float(src[j]), s);
    } else {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = to_float(src[j]);
    }
  }
}

// ------------------------------------------------------------------ host side
at::Tensor quantize_fp16_cuda(const at::Tensor& x_in) {
  check_float_matrix(x_in, "automl_tl::quantize_fp16");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kHalf));
  const int64_t n = x.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  quantize_fp16_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
      x.const_data_ptr<float>(), reinterpret_cast<__half*>(out.mutable_data_ptr<at::Half>()),
      n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_int8_cuda(const at::Tensor& x_in) {
  check_float_matrix(x_in, "automl_tl::quantize_int8");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), d = x.size(1);
  at::Tensor q = at::empty({rows, d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows}, x.options());
  if (rows == 0) return {q, scale};
  auto stream = c10::cuda::getCurrentCUDAStream();
  quantize_int8_kernel<<<blocks_for(rows, 1), row_threads(d), 0, stream>>>(
      x.const_data_ptr<float>(), q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>(),
      rows, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, scale};
}

template <typename T, typename I>
void launch_gather(const T* values, int64_t row_stride, const float* scales, const I* index,
                   float* out, int64_t count, int64_t rows, int64_t d) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  gather_dequantize_kernel<T, I><<<blocks_for(count, 1), row_threads(d), 0, stream>>>(
      values, row_stride, scales, index, out, count, rows, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename I>
void gather_dispatch(const at::Tensor& values, const float* scales, const I* index, float* out,
                     int64_t count) {
  const int64_t rows = values.size(0), d = values.size(1), stride = values.stride(0);
  switch (values.scalar_type()) {
    case at::kHalf:
      launch_gather(reinterpret_cast<const __half*>(values.const_data_ptr<at::Half>()), stride,
                    scales, index, out, count, rows, d);
      break;
    case at::kChar:
      launch_gather(values.const_data_ptr<int8_t>(), stride, scales, index, out, count, rows, d);
      break;
    default:  // kFloat, checked by the caller
      launch_gather(values.const_data_ptr<float>(), stride, scales, index, out, count, rows, d);
  }
}

at::Tensor gather_dequantize_cuda(const at::Tensor& values_in,
                                  const std::optional<at::Tensor>& scales_in,
                                  const at::Tensor& index_in) {
  const GatherArgs args = check_gather_args(values_in, scales_in, index_in);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor &values = args.values, &index = args.index, &scales = args.scales;
  const int64_t rows = args.rows, d = args.d;
  const auto it = index.scalar_type();
  constexpr const char* op = "automl_tl::gather_dequantize";
  const float* sp = scales.defined() ? scales.const_data_ptr<float>() : nullptr;

  const int64_t count = index.numel();
  at::Tensor out = at::empty({count, d}, values.options().dtype(at::kFloat));
  if (count == 0 || d == 0) return out;
  TORCH_CHECK(rows > 0, op, ": index has ", count, " entries but the store has no rows");
  float* dst = out.mutable_data_ptr<float>();
  if (it == at::kLong) {
    gather_dispatch(values, sp, index.const_data_ptr<int64_t>(), dst, count);
  } else {
    gather_dispatch(values, sp, index.const_data_ptr<int32_t>(), dst, count);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(automl_tl, CUDA, m) {
  m.impl("quantize_fp16", &quantize_fp16_cuda);
  m.impl("quantize_int8", &quantize_int8_cuda);
  m.impl("gather_dequantize", &gather_dequantize_cuda);
}

}  // namespace automl_tl
