// Operator schemas of the feature-cache ops and the Python module entry point.
//
// The kernels live in cpu/cache_ops.cpp (CPU dispatch key) and cuda/cache_ops.cu (CUDA
// dispatch key); automl_tl/ops.py holds the pure-torch reference they must match.
//
// Importing `automl_tl._C` loads this shared library, which runs the static initialisers
// below and registers torch.ops.automl_tl.*. The module itself is empty: no pybind11, as in
// pytorch's extension-cpp example.

#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "Compiled feature-cache ops; loading it registers torch.ops.automl_tl.*",
      -1,       // no per-interpreter state
      nullptr,  // no methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(automl_tl, m) {
  // (N, D) float32 -> (N, D) float16, round to nearest even.
  m.def("quantize_fp16(Tensor x) -> Tensor");
  // (N, D) float32 -> ((N, D) int8, (N,) float32 scale); symmetric per row.
  m.def("quantize_int8(Tensor x) -> (Tensor, Tensor)");
  // values (N, D) float16|int8|float32, scales (N,) float32 or None, index (B,) int64|int32
  // -> (B, D) float32 = values[index].float() * scales[index][:, None].
  m.def("gather_dequantize(Tensor values, Tensor? scales, Tensor index) -> Tensor");
}
