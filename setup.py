"""Optional build of the compiled feature-cache ops, `automl_tl._C` (sources in csrc/).

Package metadata lives in pyproject.toml; this file only adds the extension module. The build
needs torch importable at build time, so install with `pip install --no-build-isolation`
(the Makefile does). It never fails the install: without torch, without a compiler, or when
compilation fails, the package installs as pure Python (automl_tl.ops then uses its pure-torch
reference) and one line says why.

Environment:
    AUTOML_TL_BUILD_CUDA=1   also compile csrc/cuda/*.cu (default: only when torch sees a GPU
                             and a CUDA toolkit is found); =0 never.
    AUTOML_TL_BUILD_EXT=0    skip the extension altogether.
    AUTOML_TL_BUILD_STRICT=1 a failed compile fails the build (for `make cuda` and debugging).
"""

from __future__ import annotations

import copy
import glob
import os
import sys

from setuptools import setup

NAME = "automl_tl._C"
HERE = os.path.dirname(os.path.abspath(__file__))


def _skip_line(reason: str) -> str:
    return f"automl-tl: compiled ops skipped ({reason}); installed pure Python (torch fallback)"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sources(pattern: str) -> list[str]:
    # setuptools wants paths relative to this file.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _want_cuda(torch, cpp_extension) -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why (or why not)."""
    flag = os.environ.get("AUTOML_TL_BUILD_CUDA", "")
    home = cpp_extension.CUDA_HOME
    has_nvcc = bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc"))
    if flag == "0":
        return False, "AUTOML_TL_BUILD_CUDA=0"
    if flag == "1":
        return True, f"AUTOML_TL_BUILD_CUDA=1, CUDA_HOME={home}"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if not torch.cuda.is_available():
        return False, "no GPU visible (set AUTOML_TL_BUILD_CUDA=1 to build anyway)"
    if not has_nvcc:
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, f"GPU visible, CUDA_HOME={home}"


def _extensions():
    """([extension], build_ext class) or ([], None) with the reason printed."""
    if os.environ.get("AUTOML_TL_BUILD_EXT", "") == "0":
        _say(_skip_line("AUTOML_TL_BUILD_EXT=0"))
        return [], None
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # ImportError, or a broken torch install
        _say(_skip_line(f"torch not importable at build time: {exc}; use --no-build-isolation"))
        return [], None

    sources = _sources("csrc/ops.cpp") + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3"]  # torch.utils.cpp_extension adds the C++ standard torch needs
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is an OpenMP pragma in ATen's headers: without -fopenmp it runs
        # serially. The runtime resolves to the libgomp torch has already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    cpu_ext = cpp_extension.CppExtension(
        NAME, sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
    )
    cuda, why = _want_cuda(torch, cpp_extension)
    ext = cpu_ext
    if cuda:
        try:
            ext = cpp_extension.CUDAExtension(
                NAME,
                sources + _sources("csrc/cuda/*.cu"),
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
                extra_link_args=link,
            )
        except Exception as exc:  # e.g. no CUDA_HOME: build the CPU kernels alone
            cuda, why = False, f"CUDA extension not configurable: {_last_line(exc)}"
    _say(f"automl-tl: building {NAME} ({'CPU + CUDA' if cuda else 'CPU'} kernels: {why})")
    return [ext], _optional_build_ext(cpp_extension.BuildExtension, cpu_ext if cuda else None)


def _last_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


_BUILD_ATTRS = (
    "sources",
    "include_dirs",
    "define_macros",
    "undef_macros",
    "library_dirs",
    "libraries",
    "runtime_library_dirs",
    "extra_compile_args",
    "extra_link_args",
    "language",
)


def _optional_build_ext(base, cpu_fallback):
    """A BuildExtension whose failure skips the extension instead of failing the install;
    when the CUDA build fails, it first retries with the CPU kernels alone (`cpu_fallback`)."""

    class OptionalBuildExt(base):
        skipped: str | None = None

        def run(self):
            try:
                super().run()
                return
            except Exception as exc:  # CompileError, LinkError, RuntimeError, OSError, ...
                if os.environ.get("AUTOML_TL_BUILD_STRICT", "") == "1":
                    raise
                failure = f"compilation failed: {_last_line(exc)}"
            if cpu_fallback is not None:
                _say(f"automl-tl: CUDA kernels skipped ({failure}); retrying with CPU kernels")
                # Turn the (already finalised) extension into the CPU one in place.
                for ext in self.extensions:
                    for attr in _BUILD_ATTRS:
                        setattr(ext, attr, copy.deepcopy(getattr(cpu_fallback, attr)))
                self.compiler = None  # run() made a compiler object of the option; start anew
                try:
                    super().run()
                    return
                except Exception as exc:
                    failure = f"compilation failed: {_last_line(exc)}"
            OptionalBuildExt.skipped = failure
            _say(_skip_line(failure))

        def get_outputs(self):
            return [] if OptionalBuildExt.skipped else super().get_outputs()

        def get_output_mapping(self):
            return {} if OptionalBuildExt.skipped else super().get_output_mapping()

    return OptionalBuildExt


_ext_modules, _build_ext = _extensions()
setup(
    ext_modules=_ext_modules,
    cmdclass={"build_ext": _build_ext} if _build_ext else {},
)
