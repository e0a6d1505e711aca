"""Finding a backbone's weight file: a user's path, the torch hub cache, or (when allowed)
a download into that cache. Nothing touches the network unless the user allowed it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.errors import BackboneError

__all__ = [
    "hub_checkpoint",
    "find_weights",
    "download_allowed",
    "load_state_dict_file",
    "ALLOW_DOWNLOAD_ENV",
]

ALLOW_DOWNLOAD_ENV = "AUTOML_TL_ALLOW_DOWNLOAD"


def download_allowed(flag: bool = False) -> bool:
    """True when the caller passed allow_download or AUTOML_TL_ALLOW_DOWNLOAD=1 is set."""
    return flag or os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch (a second of start-up for `automl-tl
    backbones`): $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub;
    torch's own answer once torch.hub is imported (it may have been moved by set_dir)."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def hub_checkpoint(filename: str) -> Path:
    """Where torch.hub keeps a downloaded checkpoint ($TORCH_HOME/hub/checkpoints/...)."""
    return torch_hub_dir() / "checkpoints" / filename


def find_weights(
    backbone: str,
    filename: str,
    url: str | None,
    weights: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> Path:
    """The weight file to load for `backbone`.

    Order: an explicit `weights` path; the torch hub cache; a download of `url` into the
    cache when allowed. Otherwise one error line naming the expected file and the fixes.
    """
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"weights file '{path}' not found; pass an existing file")
        return path
    cached = hub_checkpoint(filename)
    if cached.is_file():
        return cached
    if url and download_allowed(allow_download):
        import torch.hub

        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as e:
            raise BackboneError(
                f"downloading weights for {backbone} from {url} failed ({e}); "
                f"place the file at {cached} or pass --weights PATH"
            ) from None
        return cached
    raise BackboneError(
        f"no weights for {backbone}: expected {cached}; pass --weights PATH to a local "
        "state dict or .safetensors file, or allow a download with --allow-download "
        f"({ALLOW_DOWNLOAD_ENV}=1) when online"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Load a state dict safely: safetensors, or torch.load with `weights_only=True`
    (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file '{path}' not found; pass an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"weights file '{path}' cannot be loaded safely ({type(e).__name__}); "
            "provide a plain state dict saved with torch.save(model.state_dict(), ...)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file '{path}' holds {type(state).__name__}, not a state dict")
    return state
