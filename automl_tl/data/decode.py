"""Fast image loading for embedding: libjpeg-turbo through torchvision.io, same pixels as PIL.

`load_image(path, prep)` returns exactly what `preprocess.load_for_model` returns (uint8
(crop, crop, 3), shorter side resized to `prep.resize_size`, centre crop). Plain 8-bit
grey/RGB JPEGs that PIL would decode at full size are decoded by torchvision.io (it releases
the GIL, so decoder threads overlap the backbone) and resized with the same antialiased
filter as PIL. Everything else goes to the PIL loader, which training, export checks and
`automl_tl.export.predictor` use: non-JPEG files, CMYK/YCCK and 12-bit JPEGs (colour conversion
would differ), large JPEGs where PIL's draft mode (DCT-domain downscaling) is faster and
gives other pixels, files without an end-of-image marker, and anything torchvision refuses.
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .preprocess import DEFAULT_MAX_PIXELS, Preprocessing, load_for_model

__all__ = ["JpegInfo", "jpeg_info", "uses_torchvision", "load_image", "decoder_id"]

# torchvision >= 0.29 warns on every decode call that TorchCodec supersedes it.
warnings.filterwarnings(
    "ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning
)
_HEAD_BYTES = 1 << 16  # SOF sits after APPn segments; an EXIF thumbnail can push it past 4 KB
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RSTn: no length field
# PIL filters; torch's antialiased bilinear/bicubic are ports of PIL's resampling code.
# "nearest" stays with PIL: torch's nearest picks other source pixels on downscaling.
_INTERPOLATION = ("bilinear", "bicubic")


@functools.lru_cache(maxsize=1)
def _torchvision():
    """(decode_jpeg, ImageReadMode, transforms.v2.functional), or None without a JPEG decoder.

    Imported on the first decode, not with this module: `import torchvision` imports its
    model zoo and torch._dynamo (seconds), which a run that reads only cached features, or
    `automl-tl --help`, should not pay for."""
    try:  # deprecated in torchvision 0.29 in favour of TorchCodec; without it, PIL does it all
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional
    except ImportError:  # pragma: no cover
        return None
    return decode_jpeg, ImageReadMode, functional


@functools.lru_cache(maxsize=1)
def torchvision_version() -> str:
    """torchvision.__version__ (with its local part, e.g. "+cpu") without importing it: read
    from the package's version.py, else from the distribution's metadata."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M)
        if found:
            return found.group(1)
    return metadata.version("torchvision")


def decoder_id() -> str:
    """What decodes pixels, with versions (part of a cached feature space's identity: a
    decoder change may change the pixels); naming it does not import torchvision."""
    import PIL

    return f"automl_tl.decode/1 torchvision {torchvision_version()} pillow {PIL.__version__}"


class JpegInfo(NamedTuple):
    """What a JPEG's frame header (SOFn) says: size before EXIF rotation, bits, components."""

    width: int
    height: int
    precision: int
    components: int


def jpeg_info(head: bytes) -> JpegInfo | None:
    """Parse the frame header from the first bytes of a file; None when it is not a JPEG or
    the header is not within `head`."""
    if head[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(head)
    while i + 4 <= n:
        if head[i] != 0xFF:
            return None  # not at a marker: corrupt segment lengths
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            h = int.from_bytes(head[i + 5 : i + 7], "big")
            w = int.from_bytes(head[i + 7 : i + 9], "big")
            return JpegInfo(w, h, head[i + 4], head[i + 9])
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    return None


def uses_torchvision(info: JpegInfo | None, prep: Preprocessing) -> bool:
    """True when torchvision decodes this JPEG to the same pixels as the PIL loader.

    PIL's draft mode (see `preprocess.load_rgb`) decodes at 1/s scale with
    s = largest of 8, 4, 2 not above min(w, h) // resize_size; such files stay with PIL,
    as do aspect ratios beyond 8:1 (`preprocess` may take another path for those).
    """
    if info is None or info.precision != 8 or info.components not in (1, 3):
        return False
    if prep.interpolation not in _INTERPOLATION or info.width * info.height > DEFAULT_MAX_PIXELS:
        return False
    if min(info.width, info.height) == 0 or max(info.width, info.height) > 8 * min(
        info.width, info.height
    ):
        return False  # extreme aspect ratios: preprocess resamples only the crop's region
    if min(info.width // prep.resize_size, info.height // prep.resize_size) >= 2:
        return False
    return _torchvision() is not None


def _resize_crop(img, prep: Preprocessing) -> np.ndarray:
    """uint8 CHW tensor -> uint8 (crop, crop, 3), the geometry of `preprocess.preprocess`."""
    from torchvision.transforms.v2 import InterpolationMode

    TF = _torchvision()[2]
    h, w = img.shape[-2:]
    scale = prep.resize_size / min(w, h)
    nw, nh = max(prep.crop_size, round(w * scale)), max(prep.crop_size, round(h * scale))
    if (nw, nh) != (w, h):  # PIL returns a copy unchanged when the size is already right
        mode = InterpolationMode(prep.interpolation)
        img = TF.resize(img, [nh, nw], interpolation=mode)
    left, top = (nw - prep.crop_size) // 2, (nh - prep.crop_size) // 2
    img = img[:, top : top + prep.crop_size, left : left + prep.crop_size]
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def load_image(path: str | Path, prep: Preprocessing) -> np.ndarray:
    """Decode one file for the model: uint8 (crop, crop, 3), pixels as `load_for_model`.

    Raises what `load_for_model` raises for files neither decoder can read.
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
        info = jpeg_info(head)
        if not uses_torchvision(info, prep):
            return load_for_model(path, prep)
        data = head + fh.read()
    if data.rstrip(b"\0")[-2:] != b"\xff\xd9":  # truncated: PIL raises, torchvision guesses
        return load_for_model(path, prep)
    import torch

    decode_jpeg, ImageReadMode, _ = _torchvision()
    try:
        img = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=True,
        )
    except RuntimeError:
        return load_for_model(path, prep)
    return _resize_crop(img, prep)
