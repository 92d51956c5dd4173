"""Spatial masks for the applications: crossover, inpainting, scribbles, local style transfer, feature transfer.

A mask is float32 [H, W] in [0, 1], 1 = "this pixel counts / is the region". The array functions
(`gaussian_blur`, `dilate`, `m_blur`, `m_blur_plus`, `resize_mask`) also take a stack [..., H, W, 1]
and give back the same layout; they are pure jax.numpy, jitted with their sizes and settings static
(one compile per shape and setting), and can be called inside another jax.jit.

    hole = from_spec("rect:0.25,0.25,0.5,0.5", 256)      # or half:left, ellipse:..., a path to a PNG
    keep = 1.0 - m_blur_plus(hole)                       # inpainting: the loss ignores the hole and its rim
    seam = m_blur(load_mask("left_eye.png", 256))        # crossover: M_blur
    m16 = resize_mask(seam, 16)                          # a mask at a 16x16 feature map (area average)

User mistakes (unreadable or unusable mask file, bad spec, empty or full mask, wrong shape) raise
`i2spp_jax.io.ImageError` (a ValueError), which the command lines report in one line. A missing
file raises FileNotFoundError, as `io.load_image` does. Wrong arguments to the array functions
(a negative sigma, an [H, W, 3] array) are bugs in the calling code and raise a plain ValueError.
"""

import functools
import math
import os
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from i2spp_jax.io import ImageError

# load_mask refuses a file when more than this fraction of its pixels is mid-grey (0.1 < v < 0.9):
# anti-aliased edges of a drawn mask stay well below it, a photograph does not.
PHOTO_FRACTION = 0.05
_MID_GREY = (0.1, 0.9)

_SIDES = ("left", "right", "top", "bottom")
SPEC_FORMS = ("rect:TOP,LEFT,HEIGHT,WIDTH", "half:left|right|top|bottom", "ellipse:CY,CX,RY,RX",
              "PATH (an image file)")


# ---------------------------------------------------------------------------------------------
# Files and checks


def _open(path: str) -> Image.Image:
    """Opens and decodes `path` (first frame, EXIF rotation applied), as io.load_image does."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no mask image at {path!r}")
    try:
        im = Image.open(path)
        im.load()  # decode now, so that a truncated file fails here
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image pillow can read (corrupt file or unknown format); "
                         "save the mask as a black-and-white PNG") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: the mask image is corrupt or truncated ({e}); save it again as PNG") from e
    transposed = ImageOps.exif_transpose(im)
    im = transposed if transposed is not None else im
    if im.width == 0 or im.height == 0:
        raise ImageError(f"{path}: the mask image is empty ({im.width}x{im.height}); draw it at the photo's size")
    return im


def _coverage(im: Image.Image, path: str) -> np.ndarray:
    """The mask's value per pixel, [h, w] float32 in [0, 1], by the rule in `load_mask`'s docstring."""
    bands = im.getbands()
    alpha = None
    if "A" in bands:
        alpha = im.getchannel("A")
    elif im.mode == "P" and "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
    if alpha is not None:
        a = np.asarray(alpha, np.float32) / 255.0
        if a.min() < a.max():
            return a
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale (old pillow opens 16-bit PNGs as "I"): full scale is 65535.
        return np.clip(np.asarray(im, np.float32) / 65535.0, 0.0, 1.0)
    if im.mode == "F":
        return np.clip(np.asarray(im, np.float32), 0.0, 1.0)
    try:
        grey = im.convert("L")
    except ValueError:
        try:
            grey = im.convert("RGB").convert("L")
        except ValueError as e:
            raise ImageError(f"{path}: image mode {im.mode!r} cannot be read as a mask ({e}); "
                             "save it as a black-and-white PNG") from e
    return np.asarray(grey, np.float32) / 255.0


def _centre_crop(a: np.ndarray) -> np.ndarray:
    """The centred square of [h, w], the same pixels as io.load_image keeps for a photo of that size."""
    h, w = a.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return a[top:top + s, left:left + s]


def load_mask(path: str, resolution: int, *, threshold: float = 0.5) -> np.ndarray:
    """Reads a mask drawn as an image file, for a `resolution`x`resolution` generator.

    Rule, in order:
      1. Value per pixel in [0, 1]: if the image has an alpha channel (RGBA, LA, PA, a palette with
         transparency, ...) whose values are not all equal, the alpha is the mask (opaque = 1,
         transparent = 0). Otherwise the luminance (pillow's "L", ITU-R 601: white = 1, black = 0);
         16-bit greyscale (I;16, I) is divided by 65535, float images (F) are clipped to [0, 1].
      2. Refused if it looks like a photo: more than PHOTO_FRACTION (5%) of the pixels lie strictly
         between 0.1 and 0.9 (checked at the file's own size).
      3. A non-square image is centre-cropped to its shorter side, exactly as io.load_image crops a
         photo, so a mask drawn on (a copy of) the photo lines up with the loaded photo.
      4. Resized to resolution x resolution: box filter (area average) when shrinking, nearest when
         enlarging, unchanged when the size already matches.
      5. Thresholded: 1 where value >= `threshold`, else 0. After an area-average shrink this means
         "at least `threshold` of the pixel's area was on".
      6. Refused if empty (no pixel on) or full (every pixel on).

    Args:
      path: the image file (any format and mode pillow reads).
      resolution: the generator's side in pixels.
      threshold: in (0, 1].

    Returns:
      [resolution, resolution] float32 with values in {0, 1}.

    Raises:
      FileNotFoundError: no file at `path`.
      ImageError: unreadable/corrupt file, photo-like, empty or full mask (the message says the fix).
    """
    if not 0.0 < threshold <= 1.0:
        raise ImageError(f"mask threshold {threshold} must lie in (0, 1]")
    a = _coverage(_open(path), path)
    mid = float(np.mean((a > _MID_GREY[0]) & (a < _MID_GREY[1])))
    if mid > PHOTO_FRACTION:
        raise ImageError(f"{path}: the mask looks like a photo, not a mask: draw it black and white "
                         f"({mid:.0%} of its pixels are grey; white or opaque = the region)")
    a = _centre_crop(a)
    if a.shape[0] != resolution:
        method = Image.BOX if a.shape[0] > resolution else Image.NEAREST
        a = np.asarray(Image.fromarray(a, mode="F").resize((resolution, resolution), method), np.float32)
    return check_mask((a >= threshold).astype(np.float32), resolution, path)


def check_mask(mask, resolution: int, name: str = "mask") -> np.ndarray:
    """Checks an in-memory mask; returns it as [resolution, resolution] float32 numpy.

    Args:
      mask: [R, R] or [R, R, 1], values in [0, 1] (binary or soft).
      resolution: R, the side it must have.
      name: what to call it in messages (a flag name or file path).

    Returns:
      [R, R] float32 in [0, 1].

    Raises:
      ImageError: wrong shape, values outside [0, 1] or not finite, empty (every value 0: nothing
        would count) or full (every value 1: the applications need some pixels outside the region).
    """
    a = np.asarray(mask, np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.shape != (resolution, resolution):
        raise ImageError(f"{name}: mask of shape {np.shape(mask)}; expected [{resolution}, {resolution}] "
                         f"(or [{resolution}, {resolution}, 1]): make it at the generator's resolution")
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
        raise ImageError(f"{name}: mask values must be finite and lie in [0, 1] "
                         f"(found values from {a.min():.3g} to {a.max():.3g}); 1 = the region")
    if a.max() == 0.0:
        raise ImageError(f"{name}: the mask is empty at {resolution}x{resolution} (no pixel is on): "
                         "draw the region in white (or opaque) on black, large enough to survive the resize")
    if a.min() == 1.0:
        raise ImageError(f"{name}: the mask is full at {resolution}x{resolution} (every pixel is on); the "
                         "application needs some pixels outside the region: leave part of it black")
    return a


# ---------------------------------------------------------------------------------------------
# Procedural masks. Positions and sizes are fractions of the side; a pixel belongs to a shape
# when its centre does (rows/columns half-open, so half:left and half:right are complements).


def _centres(resolution: int) -> np.ndarray:
    return (np.arange(resolution, dtype=np.float64) + 0.5) / resolution


def _check_fractions(what: str, **values: float) -> None:
    for k, v in values.items():
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ImageError(f"{what}: {k}={v!r} must be a fraction of the side in [0, 1]")


def _nonempty(m: np.ndarray, what: str, resolution: int) -> np.ndarray:
    if not m.any():
        raise ImageError(f"{what} covers no pixel centre at {resolution}x{resolution}; make it larger")
    return m.astype(np.float32)


def rectangle(resolution: int, top: float, left: float, height: float, width: float) -> np.ndarray:
    """An axis-aligned rectangle, 1 inside.

    Args:
      resolution: R, the side in pixels.
      top, left, height, width: fractions of the side in [0, 1]; top + height <= 1, left + width <= 1.
        Pixel (i, j) is inside when top <= (i + 0.5) / R < top + height, and likewise for columns.

    Returns:
      [R, R] float32 in {0, 1}.

    Raises:
      ImageError: a value outside [0, 1], a rectangle leaving the image, or one that covers no pixel.
    """
    what = f"rect:{top},{left},{height},{width}"
    _check_fractions(what, top=top, left=left, height=height, width=width)
    if top + height > 1.0 + 1e-9 or left + width > 1.0 + 1e-9:
        raise ImageError(f"{what}: top + height and left + width must be <= 1 (the rectangle leaves the image)")
    c = _centres(resolution)
    rows = (c >= top) & (c < top + height)
    cols = (c >= left) & (c < left + width)
    return _nonempty(rows[:, None] & cols[None, :], what, resolution)


def half(resolution: int, side: str) -> np.ndarray:
    """Half of the image, 1 on `side` ("left", "right", "top" or "bottom").

    For odd R the middle row/column goes to "right"/"bottom" (pixel-centre rule), so opposite halves
    are exact complements. Returns [R, R] float32 in {0, 1}.
    """
    if side == "left":
        return rectangle(resolution, 0.0, 0.0, 1.0, 0.5)
    if side == "right":
        return rectangle(resolution, 0.0, 0.5, 1.0, 0.5)
    if side == "top":
        return rectangle(resolution, 0.0, 0.0, 0.5, 1.0)
    if side == "bottom":
        return rectangle(resolution, 0.5, 0.0, 0.5, 1.0)
    raise ImageError(f"half:{side}: the side must be one of {', '.join(_SIDES)}")


def ellipse(resolution: int, center_y: float, center_x: float, radius_y: float, radius_x: float) -> np.ndarray:
    """An axis-aligned ellipse, 1 inside (it may extend past the border; the outside part is cut off).

    Args:
      resolution: R, the side in pixels.
      center_y, center_x: the centre, fractions of the side in [0, 1].
      radius_y, radius_x: the semi-axes, fractions of the side in (0, 1]. Pixel (i, j) is inside when
        ((yc - center_y) / radius_y)² + ((xc - center_x) / radius_x)² <= 1 for its centre (yc, xc).

    Returns:
      [R, R] float32 in {0, 1}.

    Raises:
      ImageError: a value outside its range, or an ellipse that covers no pixel centre.
    """
    what = f"ellipse:{center_y},{center_x},{radius_y},{radius_x}"
    _check_fractions(what, center_y=center_y, center_x=center_x, radius_y=radius_y, radius_x=radius_x)
    if radius_y <= 0 or radius_x <= 0:
        raise ImageError(f"{what}: the radii must be > 0")
    c = _centres(resolution)
    d = ((c[:, None] - center_y) / radius_y) ** 2 + ((c[None, :] - center_x) / radius_x) ** 2
    return _nonempty(d <= 1.0, what, resolution)


def _numbers(spec: str, body: str, n: int) -> list[float]:
    parts = [p.strip() for p in body.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n:
        raise ImageError(f"mask spec {spec!r}: expected {n} comma-separated numbers after the colon")
    return values


def from_spec(spec: str, resolution: int) -> np.ndarray:
    """A mask from a short string, for command-line flags.

    Forms (numbers are fractions of the side, see `rectangle` and `ellipse`):
      "rect:TOP,LEFT,HEIGHT,WIDTH"    e.g. "rect:0.25,0.25,0.5,0.5" (the central quarter)
      "half:SIDE"                     SIDE in left, right, top, bottom
      "ellipse:CY,CX,RY,RX"           e.g. "ellipse:0.5,0.5,0.3,0.2"
      a path to an image file -> `load_mask(path, resolution)` (a string without a colon is a path)

    Returns:
      [resolution, resolution] float32 in {0, 1}, checked by `check_mask` (not empty, not full).

    Raises:
      ImageError: an unknown or malformed spec (the message lists the valid forms), or a mask that
        `check_mask` / `load_mask` refuses.
      FileNotFoundError: a spec without a colon that names no file.
    """
    spec = spec.strip()
    if os.path.isfile(spec):
        return load_mask(spec, resolution)
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if sep and kind == "rect":
        m = rectangle(resolution, *_numbers(spec, body, 4))
    elif sep and kind == "half":
        m = half(resolution, body.strip().lower())
    elif sep and kind == "ellipse":
        m = ellipse(resolution, *_numbers(spec, body, 4))
    elif not sep:
        return load_mask(spec, resolution)  # a path that does not exist: FileNotFoundError names it
    else:
        raise ImageError(f"unknown mask spec {spec!r} (and no such file): give one of " + ", ".join(SPEC_FORMS))
    return check_mask(m, resolution, spec)


# ---------------------------------------------------------------------------------------------
# Array operations (pure jnp, static sizes: usable inside jax.jit)


def _stack(mask) -> tuple[jax.Array, tuple, bool]:
    """[H, W] or [..., H, W, 1] -> ([B, H, W] float32, leading shape, had a channel axis)."""
    m = jnp.asarray(mask, jnp.float32)
    if m.ndim == 2:
        return m[None], (), False
    if m.ndim >= 3 and m.shape[-1] == 1:
        lead = tuple(m.shape[:-3])
        return m.reshape((-1,) + m.shape[-3:-1]), lead, True
    raise ValueError(f"a mask must be [H, W] or [..., H, W, 1]; got shape {m.shape}")


def _unstack(x: jax.Array, lead: tuple, channel: bool) -> jax.Array:
    if not channel:
        return x[0]
    return x.reshape(lead + x.shape[1:] + (1,))


def default_sigma(side: int) -> float:
    """The default blur for a mask of `side` pixels: side / 64, at least 1 px (16 px at 1024)."""
    return max(1.0, side / 64.0)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, [2r + 1] float32 with r = ceil(3 sigma); [1.0] for sigma 0."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"blur sigma must be finite and >= 0; got {sigma}")
    if sigma == 0:
        return np.ones(1, np.float32)
    r = int(math.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("sigma",))
def gaussian_blur(mask, sigma: float) -> jax.Array:
    """Separable Gaussian blur.

    The kernel is sampled at integer offsets out to r = ceil(3 sigma) and normalised to sum 1.
    Edges use "edge" padding (the border value continues outside the frame), so a region touching
    the border stays at full value there; a mask whose region lies at least r pixels from the border
    keeps its sum exactly (up to float rounding).

    Args:
      mask: [H, W] or [..., H, W, 1], values in [0, 1].
      sigma: the standard deviation in pixels (static: a Python float), >= 0; 0 = unchanged.

    Returns:
      The blurred mask, same shape, float32 in [0, 1].
    """
    x, lead, channel = _stack(mask)
    k = gaussian_kernel(sigma)
    if k.shape[0] == 1:
        return _unstack(x, lead, channel)
    h, w = x.shape[1:]
    # Two small matrix products (rows, then columns) with the edge padding folded into the matrices:
    # on CPU this is ~40x faster than a 97-tap lax convolution at 1024x1024 (same values to float rounding).
    y = jnp.einsum("ih,bhw,jw->bij", jnp.asarray(_blur_matrix(h, k)), x, jnp.asarray(_blur_matrix(w, k)),
                   precision=jax.lax.Precision.HIGHEST)
    return _unstack(y, lead, channel)


def _blur_matrix(n: int, k: np.ndarray) -> np.ndarray:
    """[n, n] matrix applying the 1-D kernel `k` along an axis of length n, edge-padded."""
    r = (k.shape[0] - 1) // 2
    rows = np.repeat(np.arange(n), k.shape[0])
    cols = np.clip(rows + np.tile(np.arange(-r, r + 1), n), 0, n - 1)
    a = np.zeros((n, n), np.float64)
    np.add.at(a, (rows, cols), np.tile(k.astype(np.float64), n))
    return a.astype(np.float32)


def _disk_widths(pixels: int) -> list[int]:
    """Half-widths of the disk's rows: offsets (dy, dx) with dy² + dx² <= pixels²."""
    return [math.isqrt(pixels * pixels - dy * dy) for dy in range(-pixels, pixels + 1)]


@functools.partial(jax.jit, static_argnames=("pixels", "shape"))
def dilate(mask, pixels: int, *, shape: str = "disk") -> jax.Array:
    """Dilation (a moving maximum) by a disk or square of radius `pixels`.

    For a binary mask this is binary dilation: a pixel turns on when an on pixel lies within the
    structuring element around it; for a soft mask it is grey dilation (the maximum). The image
    border is treated as off. The result is never below the input.

    Args:
      mask: [H, W] or [..., H, W, 1], values in [0, 1].
      pixels: the radius r >= 0 (static int); 0 = unchanged.
      shape: "disk" (offsets with dy² + dx² <= r²) or "square" (|dy|, |dx| <= r).

    Returns:
      The dilated mask, same shape, float32 in [0, 1].
    """
    if int(pixels) != pixels or pixels < 0:
        raise ValueError(f"dilation radius must be a whole number of pixels >= 0; got {pixels}")
    if shape not in ("disk", "square"):
        raise ValueError(f"dilation shape must be 'disk' or 'square'; got {shape!r}")
    x, lead, channel = _stack(mask)
    r = int(pixels)
    if r == 0:
        return _unstack(x, lead, channel)

    h, w = x.shape[1:]
    if shape == "square":
        y = _running_max(x, [r], axis=2)[r]
        return _unstack(_running_max(y, [r], axis=1)[r], lead, channel)
    widths = _disk_widths(r)
    xp = jnp.pad(x, ((0, 0), (r, r), (0, 0)))  # rows outside the image are off
    by_width = _running_max(xp, sorted(set(widths)), axis=2)
    y = by_width[widths[0]][:, 0:h]
    for dy, hw in zip(range(-r + 1, r + 1), widths[1:]):
        y = jnp.maximum(y, by_width[hw][:, r + dy:r + dy + h])
    return _unstack(y, lead, channel)


def _running_max(x: jax.Array, half_widths: list[int], axis: int) -> dict[int, jax.Array]:
    """{w: max of x over positions j - w .. j + w along `axis`} for each w, outside the array = 0.

    Doubling (van Herk-like): level L holds the maximum over L consecutive entries, built from level
    L/2 with one shifted maximum; a window of n = 2w + 1 is the maximum of two overlapping level-L
    windows, L the largest power of two <= n. O(log n) passes instead of O(n) per window.
    Values must be >= 0 (masks), so padding with 0 does not change a maximum.
    """
    n_max = 2 * max(half_widths) + 1
    pad = max(half_widths)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    xp = jnp.pad(x, widths)
    size = x.shape[axis]
    levels = {1: xp}
    L = 1
    while 2 * L <= n_max:
        lev = levels[L]
        n = lev.shape[axis]
        levels[2 * L] = jnp.maximum(jax.lax.slice_in_dim(lev, 0, n - L, axis=axis),
                                    jax.lax.slice_in_dim(lev, L, n, axis=axis))
        L *= 2
    out = {}
    for w in half_widths:
        n = 2 * w + 1
        L = 1 << (n.bit_length() - 1)
        lev = levels[L]
        lo, hi = pad - w, pad + w - L + 1  # window [j + pad - w, j + pad + w] in padded coordinates
        out[w] = jnp.maximum(jax.lax.slice_in_dim(lev, lo, lo + size, axis=axis),
                             jax.lax.slice_in_dim(lev, hi, hi + size, axis=axis))
    return out


@functools.partial(jax.jit, static_argnames=("sigma",))
def m_blur(mask, sigma: float | None = None) -> jax.Array:
    """The paper's M_blur (crossover, Alg. 3): the mask blurred so that the seam between the two
    images is soft.

    Args:
      mask: [H, W] or [..., H, W, 1], values in [0, 1].
      sigma: blur in pixels; None = `default_sigma(max(H, W))` (side / 64, at least 1).

    Returns:
      Same shape, float32 in [0, 1].
    """
    shape = jnp.shape(mask)
    side = max(shape[-2:] if len(shape) == 2 else shape[-3:-1])
    return jnp.clip(gaussian_blur(mask, default_sigma(side) if sigma is None else sigma), 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("dilate_px", "sigma"))
def m_blur_plus(mask, dilate_px: int | None = None, sigma: float | None = None) -> jax.Array:
    """The paper's M_blur+ (inpainting, Alg. 4): the mask dilated slightly (disk), then blurred.

    With the default dilation, ceil(3 sigma) = the blur kernel's radius, the blur never reaches
    into the original mask from outside: every pixel of the original region keeps a value >= 0.99
    (exactly 1 along straight axis-aligned edges, away from corners), and the soft rim lies outside it.

    Args:
      mask: [H, W] or [..., H, W, 1], values in [0, 1] (for inpainting: 1 = the missing region).
      dilate_px: dilation radius in pixels; None = ceil(3 sigma).
      sigma: blur in pixels; None = `default_sigma(max(H, W))` (side / 64, at least 1).

    Returns:
      Same shape, float32 in [0, 1].
    """
    shape = jnp.shape(mask)
    side = max(shape[-2:] if len(shape) == 2 else shape[-3:-1])
    sigma = default_sigma(side) if sigma is None else sigma
    dilate_px = int(math.ceil(3.0 * sigma)) if dilate_px is None else dilate_px
    return jnp.clip(gaussian_blur(dilate(mask, dilate_px), sigma), 0.0, 1.0)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights: exact area average when shrinking, bilinear (half-pixel centres,
    clamped at the edges) when enlarging."""
    a = np.zeros((n_out, n_in), np.float64)
    if n_out <= n_in:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
                a[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    else:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        t = src - j0
        a[np.arange(n_out), j0] += 1 - t
        a[np.arange(n_out), j1] += t
    return a.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("size",))
def resize_mask(mask, size: int | tuple[int, int]) -> jax.Array:
    """Resizes a mask, e.g. to a feature map's size.

    Each axis separately: exact area average when shrinking (any ratio; the mean is preserved),
    bilinear interpolation with half-pixel centres when enlarging (values stay in [0, 1]; a binary
    mask gets a one-pixel soft edge), unchanged when equal.

    Args:
      mask: [H, W] or [..., H, W, 1], values in [0, 1].
      size: the new side (square) or (height, width); static.

    Returns:
      [size, size] or [..., size, size, 1] float32 in [0, 1].
    """
    x, lead, channel = _stack(mask)
    oh, ow = (size, size) if isinstance(size, int) else tuple(size)
    h, w = x.shape[1:]
    if (oh, ow) != (h, w):
        x = jnp.einsum("ih,bhw,jw->bij", jnp.asarray(_resize_matrix(h, oh)), x, jnp.asarray(_resize_matrix(w, ow)),
                       precision=jax.lax.Precision.HIGHEST)
    return _unstack(x, lead, channel)
