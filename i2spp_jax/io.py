"""Image files <-> arrays [H, W, C] float32 in [-1, 1] (pillow only).

    img, notes = load_image("face.jpg", resolution=1024)   # notes: what was converted, for the user
    save_image("out.png", img)
"""

import os
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Modes converted without loss of meaning; anything else (16-bit, float, ...) is refused.
_CONVERTIBLE = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"}


class ImageError(ValueError):
    """An image file that cannot be used, with the reason."""


def _open(path: str, decode: bool) -> Image.Image:
    """The file opened by pillow (and decoded, with `decode`, so that a truncated file fails here);
    a missing, empty, foreign, corrupt or over-large file is refused naming the cause."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image at {path!r}")
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not an image (embed_folder takes a folder of images)")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path} is empty (0 bytes): the copy or download did not finish")
    try:
        with warnings.catch_warnings():  # up to pillow's error limit (179 Mpx) a photo is decoded, quietly
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            if decode:
                im.load()
            return im
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large to decode safely ({str(e).split(',')[0]}); shrink it first (the "
                         "generator needs at most its own resolution)") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image pillow can read (corrupt file or unknown format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise _corrupt(path, e) from e


def _corrupt(path: str, e: Exception) -> ImageError:
    return ImageError(f"{path}: the image data is corrupt or truncated ({e})")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as the image is displayed (EXIF orientations 5-8 turn it), read from its header
    alone; refused as `load_image` refuses."""
    with _open(path, decode=False) as im:
        try:  # pillow reads a PNG's EXIF chunk by decoding the image: a truncated file fails here
            orientation = im.getexif().get(0x0112)
        except (OSError, SyntaxError, ValueError) as e:
            raise _corrupt(path, e) from e
        return im.size[::-1] if orientation in (5, 6, 7, 8) else im.size


def load_image(path: str, resolution: int, channels: int = 3) -> tuple[np.ndarray, list[str]]:
    """Reads an image for embedding into a `resolution`x`resolution` generator with `channels` channels.

    Converts what can be converted and says so: palette/greyscale/CMYK -> RGB, alpha composited on
    white, non-square images centre-cropped, other sizes resized (Lanczos), EXIF rotation applied.
    Refuses, naming the cause: a missing or unreadable file, 16-bit / float modes (their value range
    is not known), empty images.

    Returns:
      (image [resolution, resolution, channels] float32 in [-1, 1], notes: list of what was changed)
    """
    im = _open(path, decode=True)
    notes = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"{im.n_frames} frames: using the first")
    transposed = ImageOps.exif_transpose(im)
    if transposed is not None and transposed.size != im.size:
        notes.append("rotated according to its EXIF orientation")
    im = transposed if transposed is not None else im
    if im.width == 0 or im.height == 0:
        raise ImageError(f"{path}: the image is empty ({im.width}x{im.height})")
    if im.mode not in _CONVERTIBLE:
        raise ImageError(f"{path}: image mode {im.mode!r} (e.g. 16-bit or float) is not supported; "
                         "save it as 8-bit RGB (or greyscale) PNG/JPEG first")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            notes.append("transparent pixels composited onto white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    want = "RGB" if channels == 3 else "L" if channels == 1 else None
    if want is None:
        raise ImageError(f"the generator has {channels} channels; only 1 (greyscale) and 3 (RGB) are supported")
    if im.mode != want:
        if im.mode not in ("RGBA",):
            notes.append(f"converted from mode {im.mode} to {want}")
        im = im.convert(want)
    if im.width != im.height:
        s = min(im.width, im.height)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        notes.append(f"centre-cropped from {im.width}x{im.height} to {s}x{s}")
        im = im.crop((left, top, left + s, top + s))
    if im.width != resolution:
        notes.append(f"resized from {im.width}x{im.height} to {resolution}x{resolution}"
                     + (" (upsampled: expect a blurry target)" if im.width < resolution else ""))
        im = im.resize((resolution, resolution), Image.LANCZOS)
    a = np.asarray(im, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    return a / 127.5 - 1.0, notes


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[H, W, C] in [-1, 1] -> uint8 [H, W, C] (clipped, rounded)."""
    return np.clip(np.rint((np.asarray(img, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_pil(img: np.ndarray) -> Image.Image:
    """[H, W, C] in [-1, 1] -> a pillow image (RGB or L)."""
    a = to_uint8(img)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def save_image(path: str, img: np.ndarray) -> None:
    """Writes [H, W, C] in [-1, 1] as PNG (atomically: a temporary file, then renamed)."""
    # 8-bit pixels would clip to white; a NaN render (a diverged run's) is still written, as before
    _refuse_integer_pixels(np.asarray(img), f"the image for {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: no folder {folder}")
    tmp = path + ".tmp.png"
    to_pil(img).save(tmp)
    os.replace(tmp, path)


def difference_map(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|a - b| averaged over channels, times `gain`, as a grey [H, W, 3] image in [-1, 1]
    (black = equal; white = a difference of 2 / gain or more on the [-1, 1] scale)."""
    d = np.mean(np.abs(np.asarray(a) - np.asarray(b)), axis=-1, keepdims=True) * gain / 2.0
    return np.repeat(np.clip(d, 0, 1) * 2 - 1, 3, axis=-1)


def save_npy(path: str, array) -> None:
    """np.save, atomically."""
    tmp = path + ".tmp.npy"
    np.save(tmp, np.asarray(array))
    os.replace(tmp, path)


def save_noise(directory: str, maps: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """One .npy per noise map: DIR/noise_00_b4.conv1.npy, ... Returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, (m, n) in enumerate(zip(maps, names)):
        p = os.path.join(directory, f"noise_{i:02d}_{n}.npy")
        save_npy(p, m)
        paths.append(p)
    return paths


# How far past [-1, 1] an image may reach: a generator's raw (unclipped) render goes a little past and is
# a fair target; [0, 255] pixels are far past.
RANGE_SLACK = 1.0


def _refuse_integer_pixels(x: np.ndarray, what: str) -> None:
    if np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what} is an integer ({x.dtype}) image; give floats in [-1, 1] "
                         "(x / 127.5 - 1 for 8-bit pixels, or i2spp_jax.io.load_image)")


def check_pixels(x, what: str, *, in_range: bool = True) -> None:
    """Refuses (ValueError, naming `what`) what is not a float image in [-1, 1]: integer pixels, NaN or
    inf, and (`in_range`) values far outside (an 8-bit or [0, 255] image would otherwise be fitted as it
    is, silently). The engine checks without the range: its targets may be any render, a random-weight
    generator's reaching well past [-1, 1]; the applications, which take images, check it."""
    x = np.asarray(x)
    _refuse_integer_pixels(x, what)
    if x.size == 0:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} holds NaN or inf values")
    if in_range and (lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK):
        raise ValueError(f"{what} has values in [{lo:.3g}, {hi:.3g}]; images are floats in [-1, 1] "
                         "(x / 127.5 - 1 for [0, 255] pixels)")
