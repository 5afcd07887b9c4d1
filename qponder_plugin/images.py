"""One loader for every image input (rule 4 of the house): every backend receives the same pixels.

Accepted: a path or URL (``https://``, ``s3://``, … through fsspec), bytes, a binary file object, a PIL image, a
numpy array (HWC or CHW; uint8, uint16, bool or float; gray, gray+alpha, RGB or RGBA), a torch tensor (including a
ComfyUI ``[B,H,W,C]`` float batch in 0..1), or anything a plugin's image loader turns into one of those. The result
is an 8-bit RGB PIL image with EXIF orientation applied, alpha flattened onto white, and at most ``max_pixels``
pixels (aspect ratio kept).

Camera raw files (:data:`RAW_EXTENSIONS`: CR2, CR3, NEF, ARW, DNG, RAF, ORF, RW2, …, named by a path, a URL or a
file object's name) are read through rawpy (LibRaw, the ``raw`` extra): the embedded preview when it has at least
as many pixels as the model gets (``max_pixels``, or the raw's own size if smaller), else the raw data developed by
LibRaw with the camera's white balance (at half size when that still fills the budget). The log says which (INFO).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .registry import get_image_loaders

# 1280 * 28 * 28: the usual Qwen2.5-VL budget (1,280 visual tokens).
DEFAULT_MAX_PIXELS = 1_003_520

ImageSource = Any  # path | URL | bytes | file object | PIL.Image | np.ndarray | torch.Tensor
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
RAW_EXTENSIONS = frozenset({".3fr", ".ari", ".arw", ".bay", ".cap", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf",
                            ".fff", ".gpr", ".iiq", ".k25", ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf",
                            ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f"})
# LibRaw's ``sizes.flip`` as the transpose that undoes it (0: none; 3: 180°; 5: 90° counter-clockwise; 6: clockwise).
_RAW_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """An input could not be turned into an image; the message says why, in words a user understands."""


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``source`` as an 8-bit RGB image of at most ``max_pixels`` pixels, or raise :class:`ImageError`."""
    for loader in get_image_loaders():
        try:
            converted = loader(source)
        except ImageError:
            raise
        except Exception as exc:  # a plugin's bug is this item's error, not the batch's
            name = f"{loader.__module__}.{getattr(loader, '__qualname__', loader)}"
            raise ImageError(f"{describe(source)}: image loader {name} failed ({type(exc).__name__}: {exc})") from exc
        if converted is not None:
            source = converted
            break
    if isinstance(source, Image.Image):
        return _finish(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(os.fspath(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_file(io.BytesIO(bytes(source)), "bytes", max_pixels)
    if hasattr(source, "read"):
        return _load_file(source, describe(source), max_pixels)
    if _is_tensor(source):
        source = _tensor_to_numpy(source)
    if isinstance(source, np.ndarray):
        return _finish(_from_array(source), max_pixels)
    raise ImageError(f"unsupported input type {type(source).__name__}: pass a path, bytes, a PIL image, "
                     "a numpy array or a torch tensor")


def expand(images: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    """Turn one input, a list of inputs, or a 4-D batch (ComfyUI ``[B,H,W,C]``) into a list of single inputs."""
    if _is_tensor(images) or isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [images[i] for i in range(images.shape[0])]
        return [images]
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or hasattr(images, "read"):
        return [images]
    return list(images)


def describe(source: ImageSource) -> str:
    """A short label for an input, used as ``Assessment.source``."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    shape = getattr(source, "shape", None)
    if shape is not None:
        return f"<{type(source).__name__} {'x'.join(str(int(s)) for s in shape)}>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.width}x{source.height}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://…``) rather than a local path."""
    return bool(URL.match(location))


def read_bytes(location: str) -> bytes:
    """The bytes of a local file or of a URL; fsspec fetches URLs (http(s) here, ``s3://`` with s3fs, ``gs://``
    with gcsfs). Raises ``OSError`` with the location in its message when they cannot be read."""
    if not is_url(location):
        with open(location, "rb") as handle:
            return handle.read()
    try:
        import fsspec
    except ImportError as exc:
        raise OSError(f"{location}: reading URLs needs fsspec (pip install 'qponder-plugin[filter]')") from exc
    try:
        with fsspec.open(location, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:  # fsspec's message is the bare URL
        raise OSError(f"{location}: not found") from exc
    except Exception as exc:  # a filesystem's own errors (HTTP status, credentials, unknown protocol): one message
        raise OSError(f"{location}: {type(exc).__name__}: {exc}") from exc


def _load_path(path: str, max_pixels: int | None) -> Image.Image:
    if is_url(path):
        try:
            return _load_file(io.BytesIO(read_bytes(path)), path, max_pixels)
        except OSError as exc:  # its message names the URL
            raise ImageError(str(exc)) from exc
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory, not an image")
    if is_raw(path):
        return _load_raw(path, path, max_pixels)
    with open(path, "rb") as handle:
        return _load_file(handle, path, max_pixels)


def _load_file(handle, name: str, max_pixels: int | None) -> Image.Image:
    if is_raw(name):
        return _load_raw(handle, name, max_pixels)
    try:
        image = Image.open(handle)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read") from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image data ({exc})") from exc
    try:
        with image:
            if image.format == "JPEG" and max_pixels:
                # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: a 24 MP photo never lands in memory whole.
                image.draft("RGB", _fit(image.size, max_pixels))
            image.load()
            return _finish(image, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image data ({exc})") from exc


def is_raw(name: str) -> bool:
    """Whether ``name`` (a path, URL or file name) has a camera raw file's extension."""
    return os.path.splitext(name.split("?", 1)[0] if is_url(name) else name)[1].lower() in RAW_EXTENSIONS


def _load_raw(source, name: str, max_pixels: int | None) -> Image.Image:
    """A camera raw file (a path or a binary file object) through LibRaw, as :func:`_raw_image` reads it."""
    try:
        import rawpy
    except ImportError as exc:
        raise ImageError(f"{name}: reading camera raw files needs rawpy (pip install 'qponder-plugin[raw]')") from exc
    try:
        with rawpy.imread(source) as raw:
            image, how = _raw_image(raw, name, max_pixels)
    except ImageError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ImageError(f"{name}: corrupt, truncated or unsupported raw file ({type(exc).__name__}: {detail})") \
            from exc
    log.info("%s: %s", name, how)
    return image


def _raw_image(raw, name: str, max_pixels: int | None) -> tuple[Image.Image, str]:
    """The raw's embedded preview when it holds at least the pixels the model gets, else the raw data developed
    (camera white balance; half size when that still fills ``max_pixels``); and which of the two, in words."""
    pixels = raw.sizes.width * raw.sizes.height
    if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({pixels} pixels)")
    raw.unpack()  # the raw data is decoded either way: a truncated file fails even when its preview is whole
    preview = _raw_preview(raw, min(pixels, max_pixels or pixels), max_pixels)
    if preview is not None:
        image, (width, height) = preview
        return _finish(image, max_pixels), f"embedded preview ({width}x{height})"
    half = bool(max_pixels) and pixels >= 4 * max_pixels
    developed = Image.fromarray(raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8))
    return _finish(developed, max_pixels), (f"developed by LibRaw ({'half' if half else 'full'} size, camera white "
                                            f"balance; no usable embedded preview that large)")


def _raw_preview(raw, budget: int, max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]] | None:
    """The embedded preview (JPEG or bitmap), upright, and its size, if it has at least ``budget`` pixels and
    decodes."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # none, or one LibRaw cannot unpack: the raw data is developed instead
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.BITMAP:
            image = Image.fromarray(thumb.data)
        else:
            image = Image.open(io.BytesIO(thumb.data))
        size = image.size
        if size[0] * size[1] < budget:
            return None
        upright = image.getexif().get(ExifTags.Base.Orientation, 1) == 1  # else _finish turns it by its own EXIF
        if image.format == "JPEG" and max_pixels:
            image.draft("RGB", _fit(image.size, max_pixels))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # a broken preview: develop instead
        return None
    flip = _RAW_FLIPS.get(raw.sizes.flip)
    return (image.transpose(flip) if upright and flip is not None else image), size


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _finish(image: Image.Image, max_pixels: int | None) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"empty image ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image) if image.getexif() else image
    image = _to_rgb(image)
    if max_pixels and image.width * image.height > max_pixels:
        image = image.resize(_fit(image.size, max_pixels), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if mode == "P" and "transparency" in image.info or mode in {"RGBA", "LA", "PA", "La", "RGBa"}:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8: floats in 0..1 (or 0..255), 16-bit integers, booleans."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("image array contains NaN or infinite values")
        peak = float(array.max()) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        peak = int(array.max()) if array.size else 0
        if array.dtype == np.uint16 or peak > 255:
            return np.clip(array // 257, 0, 255).astype(np.uint8)
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported array dtype {array.dtype}")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise ImageError(f"got a batch of {array.shape[0]} images; pass it to assess_batch, or one image at a time")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ImageError(f"array of shape {tuple(array.shape)} is not an image (expected HxW, HxWxC or CxHxW)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"empty image array of shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)))  # L, LA, RGB or RGBA by channel count


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _tensor_to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def iter_image_files(paths: Iterable[str], recursive: bool = True) -> Iterator[str]:
    """Expand directories into the image files under them (sorted); plain files pass through unchanged."""
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN} | RAW_EXTENSIONS
    for path in paths:
        if os.path.isdir(path):
            walker = os.walk(path) if recursive else [(path, [], os.listdir(path))]
            for root, dirs, files in walker:
                dirs.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in extensions:
                        yield os.path.join(root, name)
        else:
            yield path
