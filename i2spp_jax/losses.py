"""Image2StyleGAN++'s loss (paper Eq. 1) as pure, batched functions over arrays.

    L = λ_s · L_style(M_s, G, y) + λ_mse1 / N · ||M_m ⊙ (G − x)||² + λ_mse2 / N · ||(1 − M_m) ⊙ (G − y)||²
        + λ_p · L_percept(M_p, G, x)

Conventions:
  * Images are [N, H, W, C] float32 in [-1, 1]; masks are [N, H, W, 1] or [N, H, W] in [0, 1],
    1 = this pixel counts. A mask with leading size 1 is broadcast over the batch.
  * Every function returns one value per image, shape [N]; nothing is averaged over the batch, so
    `jax.vmap` and `jax.jit` apply directly and a batch equals a loop over its images.

Pixel scale (what the λ values assume): the original Image2StyleGAN(++) Keras/TF code computed the
MSE on images in [0, 255] and the perceptual/style features on the Keras-preprocessed image
(BGR, [0, 255], minus ImageNet means). We do the same: the MSE terms here measure (G − x) on the
[0, 255] scale, i.e. 127.5² times the MSE of [-1, 1] images, and VGG sees "keras" input. With the
paper's λ_mse1 = λ_p = 1e-5 the two terms then keep the ratio the authors tuned (and the absolute
size, which matters for the SGD variant's lr 0.8 and for Adam's epsilon). A VGG16 with "torchvision"
preprocessing sees [0, 1] standardised input, so its features are about 58x smaller
(255 · 0.226) and its perceptual term about 3400x smaller; scale λ_p / λ_s accordingly.
"""

import dataclasses
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax.vgg import PERCEPTUAL_LAYERS, VGG16

PIXEL_SCALE = 127.5  # [-1, 1] differences times this are [0, 255] differences
STYLE_LAYER = "conv3_3"
Size = Union[int, tuple[int, int], None]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The λ of Eq. 1 (Python floats: static under jit; a 0 skips its term's VGG pass).

    Defaults are the paper's masked W+ optimisation (W_l). Mk_n: mse2=1e-5, percept=0.
    M_st: style=5e-7, mse1=mse2=percept=0 (plus a content term; see eq1_loss).
    """

    style: float = 0.0  # λ_s, Gram loss at conv3_3
    mse1: float = 1e-5  # λ_mse1, M_m ⊙ (G − x), pixels on [0, 255]
    mse2: float = 0.0  # λ_mse2, (1 − M_m) ⊙ (G − y), pixels on [0, 255]
    percept: float = 1e-5  # λ_p, VGG16 features on Keras-preprocessed input


# ---------------------------------------------------------------------------------------------
# Shape checks and resizing


def _check_image(img: jax.Array, name: str, *, like: Optional[jax.Array] = None, rgb: bool = False) -> None:
    shape = tuple(img.shape)
    if like is not None and shape != tuple(like.shape):
        raise ValueError(f"{name} has shape {shape}; expected {tuple(like.shape)} (the shape of img)")
    if len(shape) != 4:
        raise ValueError(f"{name} has shape {shape}; expected [N, H, W, C]")
    if rgb and shape[-1] not in (1, 3):
        raise ValueError(f"{name} has shape {shape}; expected [N, H, W, 3] or [N, H, W, 1] (VGG16 takes RGB; "
                         "greyscale is copied into its three channels)")


def as_mask(mask: Optional[jax.Array], img: jax.Array, name: str) -> jax.Array:
    """Validates `mask` against img [N, H, W, C]; returns it as [N or 1, H, W, 1] float32 (ones if None)."""
    n, h, w, _ = img.shape
    if mask is None:
        return jnp.ones((1, h, w, 1), jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    shape = tuple(mask.shape)
    if mask.ndim == 3:
        mask = mask[..., None]
    if mask.ndim != 4 or mask.shape[-1] != 1 or mask.shape[1:3] != (h, w) or mask.shape[0] not in (1, n):
        raise ValueError(f"{name} has shape {shape}; expected [{n}, {h}, {w}, 1] or [{n}, {h}, {w}] "
                         "(leading size 1 broadcasts)")
    return mask


def resize(x: jax.Array, size: Size) -> jax.Array:
    """Bilinear resize of [N, H, W, C] to size x size (or (h, w)); antialiased when shrinking. None = as is.

    `jax.image.resize(method="linear", antialias=True)`'s function. Shrinking by a whole factor (1024 ->
    256 for VGG) runs as a few strided slices per axis with that function's own weights
    (`_band_plan`): jax.image.resize runs a dense [out, in] matrix product per axis and a transpose of
    the image, 1.3 ms of the 31 ms W+ step at 8 x 1024x1024 on an H200 (BUILD_NOTES.md, issue 9).
    """
    if size is None:
        return x
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[1:3]) == hw:
        return x
    plans = [_band_plan(n_in, n_out) for n_in, n_out in zip(x.shape[1:3], hw)]
    if any(p is None for p in plans):
        return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method="linear", antialias=True)
    for axis, plan in zip((1, 2), plans):
        x = _banded(x, axis, *plan)
    return x


@functools.lru_cache(maxsize=None)
def _band_plan(n_in: int, n_out: int) -> Optional[tuple[int, int, np.ndarray]]:
    """(stride, first tap's offset, weights [n_out, taps]) such that output i is
    sum_k weights[i, k] * x[stride * i + offset + k] (x zero outside [0, n_in)), read off
    `_linear_resize_weights`; None unless n_in is a whole multiple of n_out (a shrink), where
    every row's taps sit at the same place relative to stride * i."""
    if n_out >= n_in or n_in % n_out:
        return None
    mat = _linear_resize_weights(n_in, n_out)
    stride = n_in // n_out
    rows, cols = np.nonzero(mat)
    rel = cols - stride * rows
    offset, taps = int(rel.min()), int(rel.max() - rel.min() + 1)
    weights = np.zeros((n_out, taps), np.float32)
    weights[rows, rel - offset] = mat[rows, cols]
    return stride, offset, weights


def _linear_resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """jax.image.resize's weight matrix [n_out, n_in] for one axis (method "linear", antialias=True,
    no translation), by its own formula in float32 numpy: a triangle kernel widened by the shrink
    factor, normalised per output, zero where an output's centre falls outside the input. Equal to
    the matrix jax.image.resize applies to within one float32 rounding of the normalisation (XLA may
    divide by a reciprocal). Plain numpy, so a trace pays nothing for it: evaluated with jax under
    `ensure_compile_time_eval`, every operation compiled on its own (about 3 s of the config-f W+
    step's first trace on the 2-core CPU, BUILD_NOTES.md)."""
    f32 = np.float32
    inv_scale = 1.0 / (n_out / n_in)  # as jax.image.resize computes it
    centres = (np.arange(n_out, dtype=f32) + f32(0.5)) * f32(inv_scale) - f32(0.5)
    dist = np.abs(centres[None, :] - np.arange(n_in, dtype=f32)[:, None]) / f32(max(inv_scale, 1.0))
    w = np.maximum(f32(0), f32(1) - dist)
    total = np.sum(w, axis=0, keepdims=True, dtype=f32)
    w = np.where(np.abs(total) > 1000.0 * float(np.finfo(np.float32).eps), w / np.where(total != 0, total, f32(1)), f32(0))
    inside = (centres >= -0.5) & (centres <= n_in - 0.5)
    return np.where(inside[None, :], w, f32(0)).astype(f32).T


def _banded(x: jax.Array, axis: int, stride: int, offset: int, weights: np.ndarray) -> jax.Array:
    """One axis of `resize` by `_band_plan`'s taps: strided slices of the zero-padded input, weighted
    per output position and summed (elementwise work, which XLA fuses). Its gradient is
    `_banded_transpose`, one phase per input position modulo the stride."""
    return _banded_vjp(x, axis, stride, offset, _Taps(weights))


class _Taps:
    """`_band_plan`'s weights as a static argument, equal by identity (the plan is cached)."""

    def __init__(self, weights: np.ndarray):
        self.weights = weights

    def __hash__(self):
        return id(self.weights)

    def __eq__(self, other):
        return isinstance(other, _Taps) and other.weights is self.weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _banded_vjp(x, axis, stride, offset, taps):
    return _banded_forward(x, axis, stride, offset, taps.weights)


def _banded_fwd(x, axis, stride, offset, taps):
    return _banded_forward(x, axis, stride, offset, taps.weights), x.shape[axis]


def _banded_bwd(axis, stride, offset, taps, n_in, g):
    return (_banded_transpose(g, axis, n_in, stride, offset, taps.weights),)


_banded_vjp.defvjp(_banded_fwd, _banded_bwd)


def _banded_transpose(g: jax.Array, axis: int, n_in: int, stride: int, offset: int, weights: np.ndarray) -> jax.Array:
    """The transpose of `_banded` along `axis` (n_out -> n_in): input position p = stride * q + r
    receives w[i, k] * g[i] from the taps k whose start lies in phase r, at q = i + start // stride.
    Each phase sums its taps' weighted, shifted copies of g at the output's resolution; the phases are
    then interleaved once. JAX's own transpose of the strided slices pads g with stride - 1 zeros per
    tap and sums the padded copies: fused with the other axis, 8 x 8 padded copies per image element
    (351 operations per pixel in that fusion, 29 with this), the bf16 W+ step's slowest kernel on an
    H200 (0.95 ms for 0.46 GB, BUILD_NOTES.md, issue 9)."""
    n_out, taps = weights.shape
    lo = max(0, -offset)
    q_len = -(-(lo + n_in) // stride)  # phases cover the padded input's first lo + n_in positions
    shape = [1] * g.ndim
    shape[axis] = n_out
    phases = [None] * stride
    for k in range(taps):
        start = offset + lo + k
        r, d = start % stride, start // stride
        if d >= q_len:
            continue  # this tap only ever read the high-side zero padding
        term = g * jnp.asarray(weights[:, k].reshape(shape), g.dtype)
        cfg = [(0, 0, 0)] * g.ndim
        cfg[axis] = (d, q_len - n_out - d, 0)  # negative high padding crops what fell in the padding
        term = jax.lax.pad(term, jnp.zeros((), g.dtype), cfg)
        phases[r] = term if phases[r] is None else phases[r] + term
    zeros = jnp.zeros(g.shape[:axis] + (q_len,) + g.shape[axis + 1:], g.dtype)
    stacked = jnp.stack([zeros if p is None else p for p in phases], axis=axis + 1)
    full = stacked.reshape(g.shape[:axis] + (q_len * stride,) + g.shape[axis + 1:])
    return jax.lax.slice_in_dim(full, lo, lo + n_in, axis=axis)


def _banded_forward(x: jax.Array, axis: int, stride: int, offset: int, weights: np.ndarray) -> jax.Array:
    n_in, (n_out, taps) = x.shape[axis], weights.shape
    lo = max(0, -offset)
    hi = max(0, stride * (n_out - 1) + offset + taps - n_in)
    pad = [(0, 0, 0)] * x.ndim
    pad[axis] = (lo, hi, 0)
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), pad)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = None
    for k in range(taps):
        start = offset + lo + k
        tap = jax.lax.slice_in_dim(xp, start, start + stride * (n_out - 1) + 1, stride=stride, axis=axis)
        term = tap * jnp.asarray(weights[:, k].reshape(shape), x.dtype)
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------------------------
# The terms


def mse_terms(img: jax.Array, x: jax.Array, y: jax.Array, mask_mse: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The two masked MSE terms of Eq. 1, unweighted.

    Args:
      img: G(w, n), [N, H, W, C] in [-1, 1].
      x: target inside the mask, [N, H, W, C] in [-1, 1].
      y: target outside the mask, [N, H, W, C] in [-1, 1].
      mask_mse: M_m, [N, H, W, 1] or [N, H, W] in [0, 1]; None = all ones (then mse2 = 0).

    Returns:
      (||M_m ⊙ (G − x)||² / N, ||(1 − M_m) ⊙ (G − y)||² / N), each [N], with pixel differences on the
      [0, 255] scale and N = H·W·C the number of scalars in one image (not the mask's area).
    """
    _check_image(img, "img")
    _check_image(x, "x", like=img)
    _check_image(y, "y", like=img)
    m = as_mask(mask_mse, img, "mask_mse")
    d_x = (img - x) * PIXEL_SCALE
    d_y = (img - y) * PIXEL_SCALE
    mse1 = jnp.mean(jnp.square(m * d_x), axis=(1, 2, 3))
    mse2 = jnp.mean(jnp.square((1.0 - m) * d_y), axis=(1, 2, 3))
    return mse1, mse2


def perceptual_distance(feats_g: dict, feats_x: dict, mask: jax.Array, layers: Sequence[str]) -> jax.Array:
    """Σ_layers ||M_j ⊙ (F_j(G) − F_j(x))||² / size_j, [N]; M_j = `mask` resized to layer j's map.

    Args:
      feats_g, feats_x: {layer: [N, h, w, C]} (e.g. from `VGG16.features`).
      mask: [N or 1, H, W, 1] in [0, 1] at the resolution VGG saw.
    """
    total = 0.0
    for name in layers:
        f_g, f_x = feats_g[name], feats_x[name]
        m = resize(mask, f_g.shape[1:3])
        total = total + jnp.mean(jnp.square(m * (f_g - f_x)), axis=(1, 2, 3))
    return total


def gram(feats: jax.Array, mask: jax.Array) -> jax.Array:
    """Gram matrix of masked features, [N, C, C]: (M ⊙ F)ᵀ(M ⊙ F) / (C · Σ M²), feats [N, h, w, C],
    mask [N or 1, H, W, 1] resized to (h, w).

    The normalisation by the mask's own area (Σ M² over the feature map; h·w without a mask) makes
    it the region's second moment, independent of the region's size, so that a region of G can be
    compared with a region of another size in y (or with all of y).
    """
    n, h, w, c = feats.shape
    m = resize(mask, (h, w))
    f = (m * feats).reshape(n, h * w, c)
    area = jnp.sum(jnp.square(m), axis=(1, 2, 3))  # [N or 1]
    return jnp.einsum("npc,npd->ncd", f, f) / (c * jnp.maximum(area, 1e-8))[:, None, None]


def style_distance(feats_g: jax.Array, feats_y: jax.Array, mask: jax.Array,
                   mask_y: Optional[jax.Array] = None) -> jax.Array:
    """Mean squared difference of the masked Gram matrices, [N]. feats [N, h, w, C]; mask (on G) and
    mask_y (on y; None = the same mask) [N or 1, H, W, 1]."""
    g_y = gram(feats_y, mask if mask_y is None else mask_y)
    return jnp.mean(jnp.square(gram(feats_g, mask) - g_y), axis=(1, 2))


def _vgg_features(vgg: VGG16, images: Sequence[jax.Array], layers: Sequence[str], resize_to: Size) -> list[dict]:
    """One VGG pass over several [N, H, W, 3] batches stacked together; returns one feature dict each."""
    n = images[0].shape[0]
    stacked = resize(jnp.concatenate(images, axis=0), resize_to)
    feats = vgg.features(stacked, layers)
    return [{k: v[i * n:(i + 1) * n] for k, v in feats.items()} for i in range(len(images))]


def perceptual_loss(vgg: VGG16, img: jax.Array, x: jax.Array, mask: Optional[jax.Array], *,
                    layers: Sequence[str] = PERCEPTUAL_LAYERS, resize_to: Size = 256) -> jax.Array:
    """Masked perceptual loss L_percept(M_p, G, x), unweighted, [N].

    Both images (and the mask) are resized to resize_to x resize_to (None: as they are), passed
    through VGG16, and each layer's squared feature difference, times the mask resized to that
    layer, is averaged over the layer's size h·w·C; the layers are summed.

    Args:
      vgg: a `VGG16` (its preprocessing is applied inside).
      img: G(w, n), [N, H, W, 3] in [-1, 1].
      x: target, [N, H, W, 3] in [-1, 1].
      mask: M_p, [N, H, W, 1] or [N, H, W] in [0, 1]; None = all ones.
      layers: VGG16 layers (PERCEPTUAL_LAYERS for Image2StyleGAN++, I2S_LAYERS for Image2StyleGAN).
      resize_to: the side VGG sees (256 as in Image2StyleGAN), an (h, w) pair, or None.
    """
    _check_image(img, "img", rgb=True)
    _check_image(x, "x", like=img)
    m = as_mask(mask, img, "mask")
    feats_g, feats_x = _vgg_features(vgg, [img, x], layers, resize_to)
    return perceptual_distance(feats_g, feats_x, resize(m, resize_to), layers)


def style_loss(vgg: VGG16, img: jax.Array, y: jax.Array, mask: Optional[jax.Array], *,
               mask_y: Optional[jax.Array] = None, layer: str = STYLE_LAYER, resize_to: Size = 256) -> jax.Array:
    """Masked Gram (style) loss L_style(M_s, G, y), unweighted, [N].

    The mask multiplies G's features, and mask_y (None: the same mask) y's, before their Gram
    matrices (M ⊙ F)ᵀ(M ⊙ F) / (C · Σ M²) (see `gram`); the loss is the mean squared difference of
    the C x C entries. Arguments as in `perceptual_loss`; y [N, H, W, 3] in [-1, 1] is the style image.
    """
    _check_image(img, "img", rgb=True)
    _check_image(y, "y", like=img)
    m = as_mask(mask, img, "mask")
    m_y = None if mask_y is None else resize(as_mask(mask_y, img, "mask_y"), resize_to)
    feats_g, feats_y = _vgg_features(vgg, [img, y], (layer,), resize_to)
    return style_distance(feats_g[layer], feats_y[layer], resize(m, resize_to), m_y)


def target_features(vgg: VGG16, x: jax.Array, y: jax.Array, *, weights: LossWeights, resize_to: Size = 256) -> dict:
    """The VGG16 features of the fixed targets that `eq1_loss` compares with: {"x": {layer: [N, h, w, C]}
    for the perceptual term, "y": {STYLE_LAYER: ...} for the style term} (only the terms whose λ is
    not 0). An optimisation computes them once and passes them as `eq1_loss(target_feats=...)`.
    """
    out = {}
    if weights.percept != 0:
        out["x"] = vgg.features(resize(x, resize_to), PERCEPTUAL_LAYERS)
    if weights.style != 0:
        out["y"] = vgg.features(resize(y, resize_to), (STYLE_LAYER,))
    return out


def eq1_loss(vgg: VGG16, img: jax.Array, x: jax.Array, y: jax.Array, *,
             mask_mse: Optional[jax.Array] = None,
             mask_percept: Optional[jax.Array] = None,
             mask_style: Optional[jax.Array] = None,
             mask_style_y: Optional[jax.Array] = None,
             weights: LossWeights = LossWeights(),
             resize_to: Size = 256,
             target_feats: Optional[dict] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Image2StyleGAN++ Eq. 1, per image.

    Args:
      vgg: a `VGG16` (pass it as a jit argument; it is a pytree).
      img: G(w, n), [N, H, W, 3] in [-1, 1].
      x: target of the mse1 and perceptual terms, [N, H, W, 3] in [-1, 1].
      y: target of the mse2 and style terms, [N, H, W, 3] in [-1, 1] (may be x).
      mask_mse, mask_percept, mask_style: M_m, M_p, M_s, [N, H, W, 1] or [N, H, W] in [0, 1]
        (leading size 1 broadcasts); None = all ones. M_s masks G's features in the style term.
      mask_style_y: the mask on y's features in the style term (None = M_s), e.g. "the style of all
        of y inside region M_s of G": mask_style = M, mask_style_y = ones.
      weights: the λ values (static). A VGG term (percept, style) whose λ is 0 is not computed
        and is reported as 0; with λ_p = λ_s = 0 VGG does not run at all. The MSE terms are
        always reported.
      resize_to: the side VGG sees; 256 as in Image2StyleGAN.
      target_feats: `target_features(vgg, x, y, ...)` computed beforehand (the targets are fixed
        during an optimisation), so that VGG runs on img alone; None = computed here.

    Returns:
      (total [N], {"mse1", "mse2", "percept", "style": [N] each, unweighted}).

    Local style transfer (M_st) keeps the rest of the image with Eq. 1's own mse1 term: x = the
    content image, mask_mse = 1 − M_s, λ_mse1 > 0; y = the style image.
    """
    _check_image(img, "img", rgb=weights.percept != 0 or weights.style != 0)
    mse1, mse2 = mse_terms(img, x, y, mask_mse)
    zeros = jnp.zeros(img.shape[0], jnp.float32)
    percept, style = zeros, zeros
    use_p, use_s = weights.percept != 0, weights.style != 0
    m_p = as_mask(mask_percept, img, "mask_percept")  # validated even when its term is off
    m_s = as_mask(mask_style, img, "mask_style")
    m_sy = None if mask_style_y is None else resize(as_mask(mask_style_y, img, "mask_style_y"), resize_to)
    if use_p or use_s:
        layers = tuple(dict.fromkeys((PERCEPTUAL_LAYERS if use_p else ()) + ((STYLE_LAYER,) if use_s else ())))
        if target_feats is None:
            batches = [img] + ([x] if use_p else []) + ([y] if use_s else [])
            feats = _vgg_features(vgg, batches, layers, resize_to)
            f_img, f_x, f_y = feats[0], feats[1] if use_p else None, feats[-1] if use_s else None
        else:
            f_img = vgg.features(resize(img, resize_to), layers)
            f_x, f_y = target_feats.get("x"), target_feats.get("y")
        if use_p:
            percept = perceptual_distance(f_img, f_x, resize(m_p, resize_to), PERCEPTUAL_LAYERS)
        if use_s:
            style = style_distance(f_img[STYLE_LAYER], f_y[STYLE_LAYER], resize(m_s, resize_to), m_sy)
    total = (weights.style * style + weights.mse1 * mse1 + weights.mse2 * mse2 + weights.percept * percept)
    return total, {"mse1": mse1, "mse2": mse2, "percept": percept, "style": style}
