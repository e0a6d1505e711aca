// Argument checks shared by the CPU and CUDA kernels of the feature-cache ops: one place that
// says what each op accepts, so both back ends refuse the same inputs with the same message.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace automl_tl {

// x must be a 2-D float32 (N, D) matrix: the input of quantize_fp16 / quantize_int8.
inline void check_float_matrix(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": expected a 2-D (N, D) tensor, got ", x.dim(),
              "-D with shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": expected float32 input, got ",
              x.scalar_type(), "; convert it with x.float()");
}

// The inputs of gather_dequantize, checked and made dense where a kernel needs it.
struct GatherArgs {
  at::Tensor values;  // (N, D) float16 | int8 | float32, rows may be strided, elements dense
  at::Tensor index;   // (B,) int64 | int32, contiguous
  at::Tensor scales;  // (N,) float32 contiguous, or undefined
  int64_t rows;
  int64_t d;
};

inline GatherArgs check_gather_args(const at::Tensor& values_in,
                                    const std::optional<at::Tensor>& scales_in,
                                    const at::Tensor& index_in) {
  constexpr const char* op = "automl_tl::gather_dequantize";
  TORCH_CHECK(values_in.dim() == 2, op, ": values must be a 2-D (N, D) store, got shape ",
              values_in.sizes());
  const auto vt = values_in.scalar_type();
  TORCH_CHECK(vt == at::kHalf || vt == at::kChar || vt == at::kFloat, op,
              ": values must be float16, int8 or float32, got ", vt);
  TORCH_CHECK(index_in.dim() == 1, op, ": index must be 1-D, got shape ", index_in.sizes());
  const auto it = index_in.scalar_type();
  TORCH_CHECK(it == at::kLong || it == at::kInt, op, ": index must be int64 (or int32), got ",
              it);
  TORCH_CHECK(index_in.device() == values_in.device(), op, ": index is on ", index_in.device(),
              " but values are on ", values_in.device());
  GatherArgs args;
  args.rows = values_in.size(0);
  args.d = values_in.size(1);
  // Rows may be strided (a slice of a larger store); only the elements of a row must be dense.
  args.values = values_in.stride(1) == 1 ? values_in : values_in.contiguous();
  args.index = index_in.contiguous();
  if (scales_in.has_value() && scales_in->defined()) {
    const at::Tensor& s = *scales_in;
    TORCH_CHECK(s.dim() == 1 && s.size(0) == args.rows, op, ": scales must have shape (",
                args.rows, ",), one per stored row, got ", s.sizes());
    TORCH_CHECK(s.scalar_type() == at::kFloat, op, ": scales must be float32, got ",
                s.scalar_type());
    TORCH_CHECK(s.device() == values_in.device(), op, ": scales are on ", s.device(),
                " but values are on ", values_in.device());
    args.scales = s.contiguous();
  }
  return args;
}

}  // namespace automl_tl
