"""Image decoding and preprocessing shared by training and ONNX inference.

Imports only numpy and Pillow so that `automl_tl.export.predictor` runs without torch,
and training and production see exactly the same pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "Preprocessing",
    "load_rgb",
    "preprocess",
    "load_for_model",
    "batch_to_float",
    "DEFAULT_MAX_PIXELS",
]

# Pillow's own decompression-bomb threshold (about 89.5 Mpx); larger images are refused.
# Pillow itself refuses anything over twice its threshold, so max_pixels above that has no
# effect. Its warning between 1x and 2x is silenced: load_rgb checks the size itself, and a
# per-call warnings.catch_warnings() would not be thread-safe.
DEFAULT_MAX_PIXELS = 89_478_485
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: shorter side resized, centre crop, scaled to [0, 1].

    Mean/std normalisation happens inside the model so the exported graph carries it.
    """

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """From `to_dict`'s output, or from a model's metadata (which leaves out mean and
        std: the graph normalises)."""
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def resize_and_crop(self) -> dict:
        """What a client does to an image before the model: no mean or std (inside)."""
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
        }


# Above this many times resize_size**2 pixels, preprocess does not build the whole resized
# image (only an aspect ratio beyond 16:1 gets there).
_MAX_RESIZED_AREA = 16

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite an image with transparency over white (the usual look of a transparent image)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (grey, palette, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:  # float images are usually scaled to [0, 1]
            top = 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open, fully decode, apply EXIF orientation and convert to RGB.

    Args:
        path: image file.
        draft_size: when given, JPEG decoding may downscale (DCT scaling) to no less
            than this size, which is several times faster for large photos.
        max_pixels: larger images are refused as decompression bombs.

    Raises:
        OSError, ValueError, Image.DecompressionBombError, UnidentifiedImageError.
    """
    with Image.open(path) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise Image.DecompressionBombError(
                f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
            )
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def preprocess(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> uint8 array (crop, crop, 3): shorter side to resize_size, centre crop."""
    w, h = img.size
    scale = prep.resize_size / min(w, h)
    nw, nh = max(prep.crop_size, round(w * scale)), max(prep.crop_size, round(h * scale))
    left, top = (nw - prep.crop_size) // 2, (nh - prep.crop_size) // 2
    if nw * nh > _MAX_RESIZED_AREA * prep.resize_size**2:
        # Extreme aspect (20000x8 would become 640000x256, 20000x1 several GB): resample only
        # the source region of the centre crop. Same filter, same centres; Pillow's float32
        # box may round a few pixels differently.
        sx, sy = nw / w, nh / h
        box = (left / sx, top / sy, (left + prep.crop_size) / sx, (top + prep.crop_size) / sy)
        img = img.resize((prep.crop_size, prep.crop_size), _RESAMPLE[prep.interpolation], box=box)
        return np.asarray(img, dtype=np.uint8)
    img = img.resize((nw, nh), _RESAMPLE[prep.interpolation])
    img = img.crop((left, top, left + prep.crop_size, top + prep.crop_size))
    return np.asarray(img, dtype=np.uint8)


def batch_to_float(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack uint8 HWC arrays into a float32 NCHW batch in [0, 1] (the model input)."""
    batch = np.stack(arrays).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def load_for_model(path, prep: Preprocessing) -> np.ndarray:
    """Decode a file exactly as training and inference both do: uint8 (crop, crop, 3)."""
    return preprocess(load_rgb(path, draft_size=prep.resize_size), prep)
