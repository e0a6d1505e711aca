"""A corpus of hostile per-file inputs, generated on demand (nothing downloaded or stored).

Each `Kind` writes one hostile thing into a class folder and says what a user expects of it:

- ``used``: read (and counted under ``conversion`` in the audit's conversions when its
  Pillow mode is not RGB);
- ``skipped``: listed in the audit's problems with a reason containing ``reason``; the run
  goes on;
- ``ignored``: never scanned at all (hidden entries, folder links that would loop).

Folder-level and CSV kinds need a whole data layout; they live in tests/test_hostile.py.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from automl_tl.data.files import IMAGE_SUFFIXES
from automl_tl.data.preprocess import load_rgb

__all__ = ["Kind", "KINDS", "noise", "write_good", "outside_dir"]

ORIENTATION = 0x0112


# --------------------------------------------------------------------------- helpers


def noise(seed: int, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    """A distinct image per seed (no two generated files share bytes by accident)."""
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def write_good(root: Path, classes=("a", "b"), per_class: int = 3, size=(64, 64)) -> list[Path]:
    """per_class distinct valid PNGs in root/<class>/good<i>.png."""
    paths = []
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / c / f"good{i}.png"
            noise(10_000 + 100 * ci + i, size).save(path)
            paths.append(path)
    return paths


def outside_dir(class_dir: Path) -> Path:
    """A folder beside the data root (class_dir/../..), for link targets outside the data."""
    out = class_dir.parent.parent / "outside"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(width: int, height: int, depth: int, colour: int, idat: bytes, extra=b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + (_chunk(b"IDAT", idat) if idat is not None else b"")
        + _chunk(b"IEND", b"")
    )


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Kind:
    """One hostile per-file input: how to write it and what the audit must do with it."""

    name: str
    write: Callable[[Path], Path]  # writes into a class folder, returns the subject path
    outcome: str  # "used" | "skipped" | "ignored"
    suffix: str  # the subject's file suffix, as written
    conversion: str | None = None  # used: the audit's conversion key, None when read as RGB
    reason: str = ""  # skipped: words the reason must contain
    check: Callable[[Path], None] | None = None  # used: extra checks of the decoded pixels
    extra_used: int = 0  # further usable files the writer adds (e.g. a duplicate's original)
    needs_non_root: bool = False  # root reads chmod 000 files

    @property
    def predict(self) -> str:
        """What `automl-tl predict` on the folder gives the subject: top, error or absent."""
        if self.outcome == "ignored" or self.suffix.lower() not in IMAGE_SUFFIXES:
            return "absent"  # predict skips hidden entries and looks at image suffixes only
        if self.outcome == "used" or "duplicate" in self.reason:
            return "top"  # a duplicate is a valid image; only training refuses the copy
        return "error"


KINDS: list[Kind] = []


def kind(name: str, outcome: str, suffix: str, **kw):
    """Register the decorated writer as a Kind."""

    def deco(fn):
        KINDS.append(Kind(name, fn, outcome, suffix, **kw))
        return fn

    return deco


# ---- files that must be skipped with a reason


@kind("corrupt_jpeg", "skipped", ".jpg", reason="not an image Pillow can read")
def _corrupt_jpeg(d: Path) -> Path:
    data = bytearray(_bytes(noise(_seed("cj")), "JPEG", quality=90))
    data[2:64] = bytes(62)  # the segment headers after the SOI marker are garbage
    return _put(d / "corrupt_jpeg.jpg", bytes(data))


@kind("truncated_jpeg", "skipped", ".jpg", reason="unreadable or truncated image")
def _truncated_jpeg(d: Path) -> Path:
    data = _bytes(noise(_seed("tj")), "JPEG", quality=90)
    return _put(d / "truncated_jpeg.jpg", data[: len(data) // 2])


@kind("corrupt_png", "skipped", ".png", reason="unreadable or truncated image")
def _corrupt_png(d: Path) -> Path:
    data = bytearray(_bytes(noise(_seed("cp")), "PNG"))
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # the deflate stream inside IDAT is broken
    return _put(d / "corrupt_png.png", bytes(data))


@kind("truncated_png", "skipped", ".png", reason="truncated")
def _truncated_png(d: Path) -> Path:
    data = _bytes(noise(_seed("tp")), "PNG")
    return _put(d / "truncated_png.png", data[: len(data) // 2])


@kind("zero_bytes", "skipped", ".jpg", reason="empty file (0 bytes)")
def _zero(d: Path) -> Path:
    return _put(d / "zero_bytes.jpg", b"")


@kind("text_named_jpg", "skipped", ".jpg", reason="not an image Pillow can read")
def _text_jpg(d: Path) -> Path:
    return _put(d / "text_named_jpg.jpg", b"this is a text file, not a JPEG\n")


@kind("html_named_png", "skipped", ".png", reason="not an image Pillow can read")
def _html_png(d: Path) -> Path:
    page = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>\n"
    return _put(d / "html_named_png.png", page)


@kind("zip_named_jpg", "skipped", ".jpg", reason="not an image Pillow can read")
def _zip_jpg(d: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inner.png", _bytes(noise(_seed("zip")), "PNG"))
    return _put(d / "zip_named_jpg.jpg", buf.getvalue())


@kind("svg_named_png", "skipped", ".png", reason="not an image Pillow can read")
def _svg_png(d: Path) -> Path:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect/></svg>'
    return _put(d / "svg_named_png.png", svg)


@kind("text_like_ppm_header", "skipped", ".jpg", reason="unreadable or truncated image")
def _ppm_text(d: Path) -> Path:
    # starts like a PPM ("P6"), so a Pillow plugin accepts it and then fails on the size
    return _put(d / "text_like_ppm_header.jpg", b"P6 hello world, not a bitmap\n")


@kind("non_image_file_no_image_suffix", "skipped", ".txt", reason="not an image Pillow can read")
def _notes(d: Path) -> Path:
    return _put(d / "non_image_file_no_image_suffix.txt", b"labelled by Bob, 2021\n")


@kind("png_header_claims_huge_size", "skipped", ".png", reason="too large")
def _png_bomb(d: Path) -> Path:
    # 100000 x 100000 claimed by a 60-byte file: refused before any pixel is allocated
    return _put(d / "png_header_claims_huge_size.png", _png(100_000, 100_000, 8, 0, None))


@kind("jpeg_header_claims_huge_size", "skipped", ".jpg", reason="too large")
def _jpeg_bomb(d: Path) -> Path:
    data = bytearray(_bytes(noise(_seed("jb")), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return _put(d / "jpeg_header_claims_huge_size.jpg", bytes(data))


@kind("real_image_above_max_pixels", "skipped", ".png", reason="exceeds the limit of")
def _real_bomb(d: Path) -> Path:
    # a valid black 1-bit 10000x8950 PNG (89.5 Mpx > the 89,478,485 guard) of ~11 KB
    w, h = 10_000, 8_950
    idat = zlib.compress(bytes(h * (1 + w // 8)), 6)  # each row: filter byte + 1250 bytes
    return _put(d / "real_image_above_max_pixels.png", _png(w, h, 1, 0, idat))


@kind("png_text_chunk_bomb", "skipped", ".png", reason="MAX_TEXT_CHUNK")
def _ztxt_bomb(d: Path) -> Path:
    text = b"Comment\x00\x00" + zlib.compress(b"A" * (16 << 20), 9)  # 16 MB of text
    raw = b"".join(b"\x00" + bytes(range(4)) for _ in range(4))
    data = _png(4, 4, 8, 0, zlib.compress(raw), extra=_chunk(b"zTXt", text))
    return _put(d / "png_text_chunk_bomb.png", data)


@kind("png_zero_by_zero", "skipped", ".png", reason="not an image Pillow can read")
def _png_empty(d: Path) -> Path:
    return _put(d / "png_zero_by_zero.png", _png(0, 0, 8, 0, zlib.compress(b"")))


@kind("broken_symlink", "skipped", ".jpg", reason="No such file or directory")
def _broken_link(d: Path) -> Path:
    link = d / "broken_symlink.jpg"
    os.symlink(d / "never_existed.jpg", link)
    return link


@kind("self_loop_symlink", "skipped", ".png", reason="Too many levels of symbolic links")
def _self_link(d: Path) -> Path:
    link = d / "self_loop_symlink.png"
    os.symlink(link.name, link)
    return link


@kind("fifo_named_jpg", "skipped", ".jpg", reason="not a regular file")
def _fifo(d: Path) -> Path:
    path = d / "fifo_named_jpg.jpg"
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    return path


@kind("symlink_to_dev_zero", "skipped", ".png", reason="not a regular file")
def _dev_zero(d: Path) -> Path:
    link = d / "symlink_to_dev_zero.png"
    os.symlink("/dev/zero", link)  # endless zeros
    return link


@kind(
    "unreadable_chmod_000",
    "skipped",
    ".jpg",
    reason="unreadable file: Permission denied",
    needs_non_root=True,
)
def _unreadable(d: Path) -> Path:
    path = _save(d / "unreadable_chmod_000.jpg", noise(_seed("ur")), format="JPEG")
    path.chmod(0)
    return path


@kind("exact_duplicate_in_class", "skipped", ".png", reason="duplicate of", extra_used=1)
def _duplicate(d: Path) -> Path:
    original = _save(d / "dup_original.png", noise(_seed("dup")))
    return _put(d / "dup_zcopy.png", original.read_bytes())  # sorts after the original


# ---- files that must be read (and converted when not RGB)


def _check_solid(rgb):
    def check(path: Path) -> None:
        arr = _rgb(path).astype(int)
        assert (np.abs(arr - rgb) <= 8).all(), (path.name, arr.reshape(-1, 3)[0])

    return check


@kind("png_named_jpg", "used", ".jpg")
def _png_as_jpg(d: Path) -> Path:
    return _save(d / "png_named_jpg.jpg", noise(_seed("pj")), format="PNG")


@kind("jpeg_named_png", "used", ".png")
def _jpg_as_png(d: Path) -> Path:
    return _save(d / "jpeg_named_png.png", noise(_seed("jp")), format="JPEG")


@kind("image_without_suffix", "used", "")
def _no_suffix(d: Path) -> Path:
    return _save(d / "image_without_suffix", noise(_seed("ns")), format="JPEG")


@kind("upper_case_suffix", "used", ".JPEG")
def _upper(d: Path) -> Path:
    return _save(d / "upper_case_suffix.JPEG", noise(_seed("uc")), format="JPEG")


def _check_one_pixel(path: Path) -> None:
    assert _rgb(path).shape == (1, 1, 3)


@kind("one_by_one", "used", ".png", check=_check_one_pixel)
def _tiny(d: Path) -> Path:
    return _save(d / "one_by_one.png", noise(_seed("11"), (1, 1)))


@kind("wide_20000x8", "used", ".png")
def _wide(d: Path) -> Path:
    return _save(d / "wide_20000x8.png", noise(_seed("wide"), (20_000, 8)))


@kind("tall_8x20000", "used", ".png")
def _tall(d: Path) -> Path:
    return _save(d / "tall_8x20000.png", noise(_seed("tall"), (8, 20_000)))


def _check_16_bit(path: Path) -> None:
    arr = _rgb(path)
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 0).all()
    assert (np.abs(arr[0, -1].astype(int) - 128) <= 1).all()  # 32768 of 65535


def _deep_array(n: int = 16) -> np.ndarray:
    arr = np.zeros((n, n), np.uint16)
    arr[0, 0], arr[0, -1] = 65535, 32768
    return arr


@kind("png_16_bit_grey", "used", ".png", conversion="I;16->RGB", check=_check_16_bit)
def _deep(d: Path) -> Path:
    return _save(d / "png_16_bit_grey.png", Image.fromarray(_deep_array()))


@kind("tiff_16_bit_grey", "used", ".tiff", conversion="I;16->RGB", check=_check_16_bit)
def _deep_tiff(d: Path) -> Path:
    return _save(d / "tiff_16_bit_grey.tiff", Image.fromarray(_deep_array()))


def _check_float(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast" from the NaN
        arr = _rgb(path)
    assert arr.min() == 0 and arr.max() == 255  # [0, 1] floats span the full 8-bit range
    assert (arr[1, 1] == 0).all()  # NaN becomes black


@kind("tiff_float_0_to_1_with_nan", "used", ".tif", conversion="F->RGB", check=_check_float)
def _float_tiff(d: Path) -> Path:
    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    ramp[1, 1] = np.nan
    return _save(d / "tiff_float_0_to_1_with_nan.tif", Image.fromarray(ramp, "F"))


def _check_48_bit(path: Path) -> None:
    assert (_rgb(path) == (255, 0, 128)).all()


@kind("png_48_bit_rgb", "used", ".png", check=_check_48_bit)
def _png48(d: Path) -> Path:
    w = h = 8
    raw = b"".join(b"\x00" + b"\xff\xff\x00\x00\x80\x00" * w for _ in range(h))
    return _put(d / "png_48_bit_rgb.png", _png(w, h, 16, 2, zlib.compress(raw)))


@kind("cmyk_jpeg", "used", ".jpg", conversion="CMYK->RGB", check=_check_solid((255, 0, 0)))
def _cmyk(d: Path) -> Path:
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    return _save(d / "cmyk_jpeg.jpg", img, format="JPEG", quality=95)


@kind("palette_png", "used", ".png", conversion="P->RGB")
def _palette(d: Path) -> Path:
    return _save(d / "palette_png.png", noise(_seed("pal"), mode="P"))


def _check_palette_alpha(path: Path) -> None:
    arr = _rgb(path)
    assert (arr[0, 0] == 255).all()  # the transparent index becomes white
    assert tuple(arr[5, 5]) == (0, 128, 0)


@kind("palette_png_transparent", "used", ".png", conversion="P->RGB", check=_check_palette_alpha)
def _palette_alpha(d: Path) -> Path:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)
    return _save(d / "palette_png_transparent.png", img, transparency=0)


def _check_rgba(path: Path) -> None:
    arr = _rgb(path)
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[5, 5]) == (200, 10, 10)


@kind("rgba_png", "used", ".png", conversion="RGBA->RGB", check=_check_rgba)
def _rgba(d: Path) -> Path:
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[...] = (200, 10, 10, 255)
    arr[0, 0] = (1, 2, 3, 0)  # fully transparent: white after flattening
    return _save(d / "rgba_png.png", Image.fromarray(arr, "RGBA"))


@kind("la_png", "used", ".png", conversion="LA->RGB", check=_check_solid((100, 100, 100)))
def _la(d: Path) -> Path:
    return _save(d / "la_png.png", Image.new("LA", (16, 16), (100, 255)))


def _check_bilevel(path: Path) -> None:
    assert set(np.unique(_rgb(path))) <= {0, 255}


@kind("bilevel_1_bit_png", "used", ".png", conversion="1->RGB", check=_check_bilevel)
def _bilevel(d: Path) -> Path:
    return _save(d / "bilevel_1_bit_png.png", noise(_seed("1bit"), mode="1"))


@kind("grey_jpeg", "used", ".jpg", conversion="L->RGB")
def _grey(d: Path) -> Path:
    return _save(d / "grey_jpeg.jpg", noise(_seed("grey"), mode="L"), format="JPEG")


@kind("animated_gif", "used", ".gif", conversion="P->RGB", check=_check_solid((255, 0, 0)))
def _gif(d: Path) -> Path:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = d / "animated_gif.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return path  # the first (red) frame is the image


def _halves(seed_name: str) -> Image.Image:
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)  # left half red
    arr[:, 32:] = (0, 0, 255)  # right half blue
    arr[0, 0] = _seed(seed_name) % 256  # distinct bytes per kind
    return Image.fromarray(arr, "RGB")


def _exif_jpeg(path: Path, orientation: int) -> Path:
    img = _halves(path.name)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    return _save(path, img, format="JPEG", exif=exif, quality=95)


def _check_rotated(red_on_top: bool):
    def check(path: Path) -> None:
        arr = _rgb(path).astype(int)
        assert arr.shape == (64, 32, 3)  # 64 wide x 32 high stored, shown upright
        top, bottom = arr[8, 16], arr[56, 16]
        red, blue = (top, bottom) if red_on_top else (bottom, top)
        assert red[0] > 200 and red[2] < 60, red
        assert blue[2] > 200 and blue[0] < 60, blue

    return check


@kind("exif_orientation_6", "used", ".jpg", check=_check_rotated(red_on_top=True))
def _exif6(d: Path) -> Path:
    return _exif_jpeg(d / "exif_orientation_6.jpg", 6)  # rotate 90 clockwise to display


@kind("exif_orientation_8", "used", ".jpg", check=_check_rotated(red_on_top=False))
def _exif8(d: Path) -> Path:
    return _exif_jpeg(d / "exif_orientation_8.jpg", 8)  # rotate 90 anticlockwise


@kind("exif_block_garbage", "used", ".jpg")
def _exif_garbage(d: Path) -> Path:
    path = d / "exif_block_garbage.jpg"
    return _save(path, noise(_seed("eg")), format="JPEG", exif=b"Exif\x00\x00" + b"\xde\xad" * 40)


def _check_not_rotated(path: Path) -> None:
    assert _rgb(path).shape == (32, 64, 3)


@kind("exif_orientation_invalid", "used", ".jpg", check=_check_not_rotated)
def _exif_invalid(d: Path) -> Path:
    return _exif_jpeg(d / "exif_orientation_invalid.jpg", 99)


@kind("unicode_file_name", "used", ".png")
def _unicode(d: Path) -> Path:
    return _save(d / "chat noir é 猫 ü.png", noise(_seed("uni")))


@kind("space_file_name", "used", ".jpg")
def _space(d: Path) -> Path:
    return _save(d / " leading and trailing space .jpg", noise(_seed("sp")), format="JPEG")


@kind("symlink_to_image_outside", "used", ".png")
def _link(d: Path) -> Path:
    target = _save(outside_dir(d) / f"target_{d.name}.png", noise(_seed("link" + d.name)))
    link = d / "symlink_to_image_outside.png"
    os.symlink(target, link)
    return link


@kind("webp", "used", ".webp")
def _webp(d: Path) -> Path:
    return _save(d / "webp.webp", noise(_seed("webp")), lossless=True)


@kind("webp_with_alpha", "used", ".webp", conversion="RGBA->RGB")
def _webp_alpha(d: Path) -> Path:
    img = noise(_seed("webpa"), mode="RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return _save(d / "webp_with_alpha.webp", img, lossless=True)


@kind("tiff", "used", ".tiff")
def _tiff(d: Path) -> Path:
    return _save(d / "tiff.tiff", noise(_seed("tiff")))


@kind("bmp", "used", ".bmp")
def _bmp(d: Path) -> Path:
    return _save(d / "bmp.bmp", noise(_seed("bmp")))


@kind("folder_named_like_an_image", "used", ".png")
def _dir_jpg(d: Path) -> Path:
    # x.jpg/ is a folder: walked into like any nested folder, never opened as a file
    return _save(d / "folder_named_like_an_image.jpg" / "inside.png", noise(_seed("dj")))


# ---- entries that must never be scanned


@kind("hidden_file", "ignored", ".png")
def _hidden(d: Path) -> Path:
    return _save(d / ".hidden_file.png", noise(_seed("hid")))


@kind("ds_store", "ignored", "")
def _ds_store(d: Path) -> Path:
    return _put(d / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64))


@kind("apple_double", "ignored", ".jpg")
def _apple_double(d: Path) -> Path:
    return _put(d / "._photo.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(32))


@kind("ipynb_checkpoints", "ignored", ".png")
def _checkpoints(d: Path) -> Path:
    return _save(d / ".ipynb_checkpoints" / "good0-checkpoint.png", noise(_seed("ipy")))


@kind("macosx_folder", "ignored", ".png")
def _macosx(d: Path) -> Path:
    return _save(d / "__MACOSX" / "resource.png", noise(_seed("mac")))


@kind("folder_symlink_loop", "ignored", "")
def _dir_loop(d: Path) -> Path:
    link = d / "folder_symlink_loop"
    os.symlink("..", link)  # class/loop -> the data root: not followed, no endless walk
    return link


@kind("empty_folder_named_like_an_image", "ignored", ".png")
def _empty_dir(d: Path) -> Path:
    path = d / "empty_folder_named_like_an_image.png"
    path.mkdir()
    return path
