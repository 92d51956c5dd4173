"""PSNR and SSIM against values worked out by hand and an independent scipy SSIM, whole and masked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from i2spp_jax import metrics
from i2spp_jax.metrics import psnr, ssim

F32_TOL = 1e-5
C1, C2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # data_range 2


def _left_mask(size, cols, n=1):
    m = np.zeros((n, size, size, 1), np.float32)
    m[:, :, :cols] = 1.0
    return jnp.asarray(m)


def test_psnr_of_a_known_mse():
    a = jnp.zeros((2, 8, 8, 3))
    b = jnp.stack([jnp.full((8, 8, 3), 0.1), jnp.full((8, 8, 3), -0.5)])  # MSE 0.01 and 0.25
    np.testing.assert_allclose(psnr(a, b), [10 * np.log10(4 / 0.01), 10 * np.log10(4 / 0.25)], rtol=F32_TOL)
    np.testing.assert_allclose(psnr(a, b), [26.0206, 12.0412], atol=1e-3)


def test_psnr_data_range_255():
    a, b = jnp.zeros((1, 4, 4, 1)), jnp.full((1, 4, 4, 1), 10.0)
    np.testing.assert_allclose(psnr(a, b, data_range=255.0), [10 * np.log10(255**2 / 100)], rtol=F32_TOL)


def test_psnr_inside_and_outside_a_mask():
    a = jnp.zeros((1, 8, 8, 3))
    b = jnp.where(_left_mask(8, 2) > 0, 0.1, 0.5) * jnp.ones((1, 8, 8, 3))
    mask = _left_mask(8, 2)
    np.testing.assert_allclose(psnr(a, b, mask), [26.0206], atol=1e-3)
    np.testing.assert_allclose(psnr(a, b, 1 - mask[..., 0]), [12.0412], atol=1e-3)
    whole = 10 * np.log10(4 / (0.25 * 0.01 + 0.75 * 0.25))
    np.testing.assert_allclose(psnr(a, b), [whole], rtol=F32_TOL)
    np.testing.assert_allclose(psnr(a, b, jnp.full((1, 8, 8), 0.6)), [whole], rtol=F32_TOL)  # > 0.5 is in


def test_psnr_of_identical_images_is_infinite():
    a = jnp.ones((1, 4, 4, 3))
    assert np.isposinf(float(psnr(a, a)[0]))


def test_ssim_of_identical_images_is_one():
    a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    np.testing.assert_allclose(ssim(a, a), [1.0, 1.0], rtol=F32_TOL)


def test_ssim_of_constant_images_by_hand():
    ca, cb = 0.2, -0.4  # no variance: SSIM is the luminance term alone
    a, b = jnp.full((1, 16, 16, 3), ca), jnp.full((1, 16, 16, 3), cb)
    expected = (2 * ca * cb + C1) / (ca**2 + cb**2 + C1)
    np.testing.assert_allclose(ssim(a, b), [expected], rtol=F32_TOL)


def _scipy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 with scipy's Gaussian filter (σ 1.5, truncated to radius 5), 'valid' region."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    values = []
    for ch in range(a.shape[-1]):
        f = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        x, y = a[..., ch], b[..., ch]
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        values.append(((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(values))


def test_ssim_matches_an_independent_scipy_implementation():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 24, 20, 3)).astype(np.float32)
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    got = ssim(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, [_scipy_ssim(a[i], b[i]) for i in range(2)], rtol=1e-4)
    assert 0.0 < float(got.max()) < 0.9


def test_ssim_inside_and_outside_a_mask():
    """Columns [0, 40) identical, the rest noisy; windows centred in [0, 32) see only columns < 38."""
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    b = a.copy()
    b[:, :, 40:] = rng.uniform(-1, 1, (1, 64, 24, 3))
    mask = _left_mask(64, 32)
    inside, outside, whole = ssim(a, b, mask), ssim(a, b, 1 - mask), ssim(a, b)
    np.testing.assert_allclose(inside, [1.0], rtol=F32_TOL)
    assert float(outside[0]) < 0.5
    assert float(outside[0]) < float(whole[0]) < float(inside[0])


def test_metrics_batch_equals_vmap_and_jit():
    rng = np.random.default_rng(3)
    a, b = (jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 3)), jnp.float32) for _ in range(2))
    mask = _left_mask(16, 8, n=3)
    for metric in (psnr, ssim):
        batched = metric(a, b, mask)
        looped = jax.vmap(lambda x, y, m: metric(x[None], y[None], m[None])[0])(a, b, mask)
        np.testing.assert_allclose(looped, batched, rtol=F32_TOL)
        np.testing.assert_allclose(jax.jit(metric)(a, b, mask), batched, rtol=F32_TOL)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_shapes_name_the_argument(metric):
    a = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"b has shape \(1, 16, 16, 1\); expected \(1, 16, 16, 3\)"):
        metric(a, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="mask has shape"):
        metric(a, a, jnp.zeros((1, 8, 16, 1)))
    with pytest.raises(ValueError, match="a has shape"):
        metric(jnp.zeros((16, 16, 3)), jnp.zeros((16, 16, 3)))


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="a has shape"):
        ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    rng = np.random.default_rng(0)
    n = 200000
    a = rng.normal(size=(n, 3)) * np.array([1.0, 2.0, 0.5])
    b = rng.normal(size=(n, 3)) * np.array([3.0, 1.0, 0.5]) + np.array([1.0, 0.0, -2.0])
    # ||mu||^2 + sum (s_a - s_b)^2 for diagonal covariances with standard deviations s
    want = (1 + 0 + 4) + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=0.02)
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    # a full covariance: a rotated copy of a has the same spectrum, so only the cross term differs
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    fd = metrics.frechet_distance(a, a @ rot.T)
    assert fd > 0.1 and fd == pytest.approx(metrics.frechet_distance(a @ rot.T, a), rel=1e-6)


def test_nearest_neighbour_distances_by_hand():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    q = np.array([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    np.testing.assert_allclose(metrics.nearest_neighbour_distances(q, ref, chunk=2), [1.0, 0.0, 5.0], atol=1e-5)
