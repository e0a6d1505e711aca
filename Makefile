# Two entry points, each setting up its own environment from scratch:
#   make demo   create .venv, install, fit on bundled sample data
#   make test   create .venv, install, lint, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# torch's own requirement lines, read from pyproject.toml so the versions live in one place.
TORCH_REQS := $(shell grep -oE '"torch(vision)?[<>=~!][^"]*"' pyproject.toml)
# pip's ninja lands in the venv's bin; torch.utils.cpp_extension looks for it on PATH.
BUILD_ENV  := PATH="$(abspath $(BIN)):$$PATH"
CPU_SRCS   := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp)

.PHONY: demo test lint bench cuda clean

# torch first, then the package WITHOUT build isolation: setup.py compiles the optional
# automl_tl._C (csrc/) against the venv's torch (an isolated build would fetch torch again).
# A failed compile still installs (pure-torch fallback); the last line says which backend.
$(STAMP): pyproject.toml $(CPU_SRCS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'setuptools>=68' wheel ninja $(TORCH_REQS)
	$(BUILD_ENV) $(BIN)/python -m pip install --quiet --no-build-isolation -e '.[dev,timm]'
	$(BIN)/python -c "import automl_tl.features.ops as o; print('automl-tl ops backend:', o.backend(), '-', o.backend_detail())"
	touch $(STAMP)

# Compile the CUDA kernels too (sm_90) into build/cuda, leaving the venv's CPU build alone,
# then load that library and show its kernels registered for the CUDA dispatch key.
CUDA_ENV := CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 AUTOML_TL_BUILD_CUDA=1 \
	AUTOML_TL_BUILD_STRICT=1
cuda: $(STAMP)
	$(BUILD_ENV) $(CUDA_ENV) $(BIN)/python setup.py --quiet build_ext \
		--build-lib build/cuda --build-temp build/cuda-temp
	$(BIN)/python -c "$$CUDA_CHECK"

define CUDA_CHECK
import glob, torch
so = glob.glob("build/cuda/automl_tl/_C*.so")[0]
torch.ops.load_library(so)
print("loaded", so)
for op in ("quantize_fp16", "quantize_int8", "gather_dequantize"):
    keys = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key("automl_tl::" + op, k)]
    print(f"  automl_tl::{op}: kernels for {', '.join(keys)}")
    assert keys == ["CPU", "CUDA"], keys
print(torch._C._dispatch_dump("automl_tl::gather_dequantize").strip())
import automl_tl.features.ops as o
print("automl_tl.features.ops.backend():", o.backend(), "-", o.backend_detail())
print("CUDA kernels registered; GPU present:", torch.cuda.is_available())
endef
export CUDA_CHECK

demo: $(STAMP)
	$(BIN)/automl-tl demo demo-data

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite must leave the environment as it found it: pip freeze before and after, compared
# whether or not the tests passed (the exit status is pytest's unless the freeze differs).
FREEZE := $(VENV)/.freeze-before-test
# --durations: the slowest tests are listed, so a CI log says where the suite's time goes
PYTEST ?= $(BIN)/pytest -q --durations=15
test: lint
	$(BIN)/python -m pip freeze --all > $(FREEZE)
	@$(PYTEST); status=$$?; \
	$(BIN)/python -m pip freeze --all | diff $(FREEZE) - \
		|| { echo "make test: the tests changed the packages installed in $(VENV)" \
		"(diff above: < before, > after); the test that installs or removes one must use" \
		"a temporary folder instead"; exit 1; }; \
	echo "make test: pip freeze of $(VENV) is identical before and after the tests"; \
	rm -f $(FREEZE); exit $$status

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_embed.py

clean:
	rm -rf $(VENV) demo-data runs .pytest_cache .ruff_cache build automl_tl/_C*.so
