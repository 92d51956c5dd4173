"""Image quality metrics, per image, whole or inside/outside a mask.

Images are [N, H, W, C] float32 in [-1, 1] (data_range = 2); masks [N, H, W, 1] or [N, H, W]
(leading size 1 broadcasts), and a pixel is inside where mask > 0.5 (outside: pass 1 - mask).
An empty mask gives NaN; identical images give PSNR = inf.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax.losses import as_mask

SSIM_SIGMA = 1.5  # Wang et al. 2004
SSIM_TAPS = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if a.ndim != 4:
        raise ValueError(f"a has shape {tuple(a.shape)}; expected [N, H, W, C]")
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b has shape {tuple(b.shape)}; expected {tuple(a.shape)} (the shape of a)")


def _masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """Mean over H, W, C of values [N, H, W, C], restricted to mask > 0.5 ([N or 1, H, W, 1]); [N]."""
    if mask is None:
        return jnp.mean(values, axis=(1, 2, 3))
    inside = jnp.broadcast_to((mask > 0.5).astype(values.dtype), values.shape[:3] + (1,))
    total = jnp.sum(values * inside, axis=(1, 2, 3))
    return total / (jnp.sum(inside, axis=(1, 2, 3)) * values.shape[-1])


@functools.partial(jax.jit, static_argnames=("data_range",))  # one program per shape, not one per operation
def psnr(a: jax.Array, b: jax.Array, mask: Optional[jax.Array] = None, data_range: float = 2.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB, [N]: 10 log10(data_range² / MSE).

    Args:
      a, b: [N, H, W, C] in [-1, 1] (or any range spanning `data_range`).
      mask: None (whole image) or [N, H, W, 1] / [N, H, W]; the MSE averages pixels with mask > 0.5.
      data_range: max - min of the pixel range; 2.0 for [-1, 1] (PSNR then equals that of [0, 255] images).
    """
    _check_pair(a, b)
    m = None if mask is None else as_mask(mask, a, "mask")
    mse = _masked_mean(jnp.square(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)), m)
    return 10.0 * jnp.log10(data_range**2 / mse)


def gaussian_taps(taps: int = SSIM_TAPS, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _blur(x: jax.Array) -> jax.Array:
    """Separable Gaussian filter, 'valid' (no padding), per channel: [N, H, W, C] -> [N, H-10, W-10, C]."""
    g = jnp.asarray(gaussian_taps())
    c = x.shape[-1]
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.tile(g.reshape(SSIM_TAPS, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(g.reshape(1, SSIM_TAPS, 1, 1), (1, 1, 1, c))
    hp = jax.lax.Precision.HIGHEST
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c, precision=hp)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c, precision=hp)


@functools.partial(jax.jit, static_argnames=("data_range",))  # one program per shape, not one per operation
def ssim_map(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Per-pixel, per-channel SSIM (Wang et al. 2004), Gaussian window σ = 1.5, 11 taps, 'valid'.

    Returns [N, H - 10, W - 10, C]; entry (i, j) is the window centred on pixel (i + 5, j + 5).
    """
    _check_pair(a, b)
    if min(a.shape[1:3]) < SSIM_TAPS:
        raise ValueError(f"a has shape {tuple(a.shape)}; SSIM needs H, W >= {SSIM_TAPS}")
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    # Second moments of images centred on their own means: shift-invariant, with less float32
    # cancellation in E[a²] − E[a]² (exact for flat regions).
    mean_a = jnp.mean(a, axis=(1, 2), keepdims=True)
    mean_b = jnp.mean(b, axis=(1, 2), keepdims=True)
    a, b = a - mean_a, b - mean_b
    mu_ac, mu_bc = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_ac**2
    var_b = _blur(b * b) - mu_bc**2
    cov = _blur(a * b) - mu_ac * mu_bc
    mu_a, mu_b = mu_ac + mean_a, mu_bc + mean_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


@functools.partial(jax.jit, static_argnames=("data_range",))  # one program per shape, not one per operation
def ssim(a: jax.Array, b: jax.Array, mask: Optional[jax.Array] = None, data_range: float = 2.0) -> jax.Array:
    """Mean SSIM, [N]: the SSIM map averaged over channels and window centres (mask > 0.5 only).

    Args:
      a, b: [N, H, W, C] in [-1, 1], H, W >= 11.
      mask: None or [N, H, W, 1] / [N, H, W]; averages the map over windows whose centre pixel has
        mask > 0.5 (windows near a mask edge still see a few pixels across it).
      data_range: 2.0 for [-1, 1] (the same SSIM as for [0, 255] images with data_range 255).
    """
    _check_pair(a, b)
    m = None if mask is None else as_mask(mask, a, "mask")
    values = ssim_map(a, b, data_range)
    r = SSIM_TAPS // 2
    if m is not None:
        m = m[:, r:-r, r:-r, :]
    return _masked_mean(values, m)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (as FID):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), computed in float64 with numpy.

    The matrix square root's trace is taken as sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), which is
    symmetric positive semi-definite, so no complex arithmetic is needed.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have shapes {a.shape} and {b.shape}; expected [N, D] and [M, D]")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev, evec = np.linalg.eigh(s_a)
    sqrt_a = (evec * np.sqrt(np.clip(ev, 0, None))) @ evec.T
    cross = np.linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a)
    tr_sqrt = np.sum(np.sqrt(np.clip(cross, 0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def nearest_neighbour_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row of queries [N, D], the Euclidean distance to its nearest row of reference [M, D]."""
    q, r = np.asarray(queries, np.float32), np.asarray(reference, np.float32)
    r_sq = np.sum(r * r, axis=1)
    out = []
    for i in range(0, len(q), chunk):
        qc = q[i:i + chunk]
        d2 = np.sum(qc * qc, axis=1)[:, None] + r_sq[None, :] - 2.0 * qc @ r.T
        out.append(np.sqrt(np.clip(d2.min(axis=1), 0, None)))
    return np.concatenate(out)
