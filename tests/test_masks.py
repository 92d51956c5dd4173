"""Tests of i2spp_jax.masks: blur, dilation, M_blur / M_blur+, mask files in every mode, shapes, specs, resize."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from i2spp_jax import io, masks
from i2spp_jax.io import ImageError

TOL = 1e-5  # float32 arithmetic on values in [0, 1]


def _disk_offsets(r):
    return {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r}


def _pattern(n=40):
    """A binary test mask [n, n]: a filled rectangle and a disk, apart."""
    m = np.zeros((n, n), np.float32)
    m[4:16, 6:30] = 1
    yy, xx = np.mgrid[:n, :n]
    m[(yy - 28) ** 2 + (xx - 26) ** 2 <= 64] = 1
    return m


# ---------------------------------------------------------------------------------------------
# Blur


def test_blur_of_a_delta_is_the_hand_computed_gaussian():
    sigma, n = 1.5, 21
    delta = np.zeros((n, n), np.float32); delta[10, 10] = 1
    r = math.ceil(3 * sigma)  # 5
    g = np.array([math.exp(-0.5 * (x / sigma) ** 2) for x in range(-r, r + 1)])
    g /= g.sum()
    want = np.zeros((n, n)); want[10 - r:11 + r, 10 - r:11 + r] = np.outer(g, g)
    np.testing.assert_allclose(masks.gaussian_blur(delta, sigma), want, atol=TOL)
    np.testing.assert_allclose(masks.gaussian_kernel(sigma), g, atol=TOL)


def test_blur_conserves_the_mass_of_an_interior_mask_and_handles_stacks():
    m = np.zeros((48, 48), np.float32)
    m[12:36, 12:36] = np.random.default_rng(0).random((24, 24)) > 0.5  # >= ceil(3 * 2.5) = 8 px from the edge
    out = masks.gaussian_blur(m, 2.5)
    assert out.shape == (48, 48) and out.dtype == jnp.float32
    np.testing.assert_allclose(float(out.sum()), float(m.sum()), rtol=TOL)
    assert float(out.min()) >= 0 and float(out.max()) <= 1 + TOL
    stack = np.stack([m, m[::-1]])[..., None]  # [2, H, W, 1]
    out2 = jax.jit(lambda s: masks.gaussian_blur(s, 2.5))(stack)
    assert out2.shape == (2, 48, 48, 1)
    np.testing.assert_allclose(out2[0, ..., 0], out, atol=TOL)
    np.testing.assert_allclose(out2[1, ..., 0], out[::-1], atol=TOL)
    np.testing.assert_array_equal(masks.gaussian_blur(m, 0.0), m)


def test_blur_edge_padding_keeps_a_border_region_at_full_value():
    out = np.asarray(masks.gaussian_blur(masks.half(32, "left"), 2.0))
    np.testing.assert_allclose(out[:, 0], 1.0, atol=TOL)  # the region continues outside the frame
    np.testing.assert_allclose(out[:, -1], 0.0, atol=TOL)
    np.testing.assert_allclose(out[:, 15] + out[:, 16], 1.0, atol=TOL)  # symmetric about the seam


# ---------------------------------------------------------------------------------------------
# Dilation


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_dilate_grows_a_pixel_into_the_disk_and_the_square(r):
    n = 2 * r + 5
    m = np.zeros((n, n), np.float32); m[n // 2, n // 2] = 1
    disk = np.asarray(masks.dilate(m, r))
    got = {(int(y) - n // 2, int(x) - n // 2) for y, x in zip(*np.nonzero(disk))}
    assert got == _disk_offsets(r)
    assert set(np.unique(disk)) == {0.0, 1.0}
    square = np.asarray(masks.dilate(m, r, shape="square"))
    assert square.sum() == (2 * r + 1) ** 2
    assert square[n // 2 - r:n // 2 + r + 1, n // 2 - r:n // 2 + r + 1].min() == 1


def test_dilate_matches_brute_force_never_shrinks_and_stops_at_the_border():
    rng = np.random.default_rng(1)
    m = (rng.random((20, 24)) > 0.93).astype(np.float32)
    m[0, 0] = 1
    r = 2
    want = np.zeros_like(m)
    for y, x in zip(*np.nonzero(m)):
        for dy, dx in _disk_offsets(r):
            if 0 <= y + dy < 20 and 0 <= x + dx < 24:
                want[y + dy, x + dx] = 1
    got = np.asarray(masks.dilate(m, r))
    np.testing.assert_array_equal(got, want)
    assert np.all(got >= m)
    soft = rng.random((20, 24)).astype(np.float32)  # grey dilation: the maximum over the disk, border = off
    square4 = {(a, b) for a in range(-4, 5) for b in range(-4, 5)}
    for r, shape, offsets in [(3, "disk", _disk_offsets(3)), (4, "square", square4)]:
        want = np.zeros_like(soft)
        for y in range(20):
            for x in range(24):
                want[y, x] = max(soft[y + dy, x + dx] for dy, dx in offsets if 0 <= y + dy < 20 and 0 <= x + dx < 24)
        np.testing.assert_array_equal(masks.dilate(soft, r, shape=shape), want)
    np.testing.assert_array_equal(masks.dilate(m, 0), m)
    with pytest.raises(ValueError, match="whole number"):
        masks.dilate(m, 1.5)


# ---------------------------------------------------------------------------------------------
# M_blur and M_blur+


def test_m_blur_default_sigma_follows_the_resolution():
    m = masks.ellipse(64, 0.5, 0.5, 0.25, 0.25)
    np.testing.assert_allclose(masks.m_blur(m), masks.gaussian_blur(m, 1.0), atol=TOL)  # max(1, 64/64)
    m2 = masks.ellipse(256, 0.5, 0.5, 0.25, 0.25)
    np.testing.assert_allclose(masks.m_blur(m2), masks.gaussian_blur(m2, 4.0), atol=TOL)  # 256/64
    assert masks.default_sigma(16) == 1.0 and masks.default_sigma(1024) == 16.0


@pytest.mark.parametrize("shape", ["ellipse", "rect"])
def test_m_blur_plus_covers_the_original_mask(shape):
    m = masks.ellipse(96, 0.5, 0.45, 0.2, 0.3) if shape == "ellipse" else masks.rectangle(96, 0.3, 0.25, 0.4, 0.3)
    sigma = 2.0
    out = np.asarray(masks.m_blur_plus(m, sigma=sigma))
    inside = m > 0
    assert out[inside].min() >= 0.99
    if shape == "rect":  # along straight edges, away from the (rounded) corners, the cover is exact
        np.testing.assert_allclose(out[29:67, 38], 1.0, atol=TOL)
        np.testing.assert_allclose(out[48, 24:53], 1.0, atol=TOL)
    r = math.ceil(3 * sigma)  # default dilation = kernel radius; the kernel's support is a square
    reach = np.asarray(masks.dilate(m, 2 * r, shape="square"))
    assert out[reach == 0].max() == 0  # nothing beyond dilation + kernel radius
    rim = (out > 0.01) & (out < 0.99)
    assert rim.any() and not (rim & inside).any()  # the soft edge lies outside the original region
    assert out.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# Mask files


def _save(tmp_path, name, pattern, mode):
    u8 = (pattern * 255).astype(np.uint8)
    if mode == "L":
        im = Image.fromarray(u8, "L")
    elif mode == "RGB":
        im = Image.fromarray(np.stack([u8] * 3, -1), "RGB")
    elif mode == "RGBA":  # the mask is in alpha; the colour is noise that must be ignored
        rgb = np.random.default_rng(2).integers(0, 256, pattern.shape + (3,), dtype=np.uint8)
        im = Image.fromarray(np.concatenate([rgb, u8[..., None]], -1), "RGBA")
    elif mode == "LA":
        im = Image.fromarray(np.stack([np.full_like(u8, 90), u8], -1), "LA")
    elif mode == "P":
        im = Image.fromarray(np.stack([u8] * 3, -1), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    elif mode == "1":
        im = Image.fromarray(u8, "L").convert("1", dither=Image.Dither.NONE)
    elif mode == "I;16":
        im = Image.fromarray((pattern * 65535).astype(np.uint16))
    path = str(tmp_path / name)
    im.save(path)
    assert Image.open(path).mode == mode
    return path


MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]


@pytest.mark.parametrize("mode", MODES)
def test_load_mask_gives_the_same_mask_in_every_mode(tmp_path, mode):
    pat = _pattern(40)
    path = _save(tmp_path, f"m_{mode.replace(';', '')}.png", pat, mode)
    same = masks.load_mask(path, 40)
    assert same.dtype == np.float32 and same.shape == (40, 40)
    np.testing.assert_array_equal(same, pat)
    np.testing.assert_array_equal(masks.load_mask(path, 80), np.kron(pat, np.ones((2, 2))))  # nearest
    area = pat.reshape(20, 2, 20, 2).mean(axis=(1, 3))  # box filter
    np.testing.assert_array_equal(masks.load_mask(path, 20), (area >= 0.5).astype(np.float32))
    np.testing.assert_array_equal(masks.load_mask(path, 20, threshold=0.25), (area >= 0.25).astype(np.float32))


def test_constant_alpha_is_ignored_in_favour_of_luminance(tmp_path):
    pat = _pattern(40)
    u8 = (pat * 255).astype(np.uint8)
    Image.fromarray(np.stack([u8, u8, u8, np.full_like(u8, 255)], -1), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(masks.load_mask(str(tmp_path / "a.png"), 40), pat)


def test_a_non_square_mask_lines_up_with_the_photo_it_was_drawn_on(tmp_path):
    photo = np.zeros((32, 48, 3), np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    photo[10:20, 20:29] = 255
    mask[10:20, 20:29] = 255
    mask[:, :5] = 255  # cut off by the centre crop, as the photo's left 8 columns are
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    img, notes = io.load_image(str(tmp_path / "photo.png"), 32)
    assert notes == ["centre-cropped from 48x32 to 32x32"]
    m = masks.load_mask(str(tmp_path / "mask.png"), 32)
    np.testing.assert_array_equal(m, (img[..., 0] > 0).astype(np.float32))
    assert m.sum() == 90


@pytest.mark.parametrize("what,words", [
    ("empty", "empty"),
    ("full", "needs some pixels outside"),
    ("photo", "looks like a photo, not a mask: draw it black and white"),
    ("vanishes", "empty at 16x16"),
    ("garbage", "not an image pillow can read"),
    ("truncated", "corrupt or truncated"),
])
def test_load_mask_refuses_unusable_files(tmp_path, what, words):
    path = str(tmp_path / f"{what}.png")
    if what == "empty":
        Image.new("L", (32, 32), 0).save(path)
    elif what == "full":
        Image.new("RGB", (32, 32), (255, 255, 255)).save(path)
    elif what == "photo":
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    elif what == "vanishes":  # one white pixel in 64x64: 1/16 of a 16x16 pixel's area, under the threshold
        a = np.zeros((64, 64), np.uint8); a[30, 30] = 255
        Image.fromarray(a).save(path)
    elif what == "garbage":
        open(path, "wb").write(b"this is not a png")
    elif what == "truncated":
        Image.fromarray(np.random.default_rng(4).integers(0, 2, (64, 64), dtype=np.uint8) * 255).save(path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ImageError, match=words) as e:
        masks.load_mask(path, 16)
    assert "\n" not in str(e.value) and path in str(e.value)


def test_load_mask_missing_file_and_bad_threshold(tmp_path):
    with pytest.raises(FileNotFoundError, match="no mask image at"):
        masks.load_mask(str(tmp_path / "nope.png"), 16)
    path = _save(tmp_path, "m.png", _pattern(40), "L")
    with pytest.raises(ImageError, match="threshold"):
        masks.load_mask(path, 16, threshold=0.0)


def test_check_mask():
    m = masks.half(8, "left")
    np.testing.assert_array_equal(masks.check_mask(m[..., None], 8, "m"), m)
    for bad, words in [(m[:4], r"expected \[8, 8\]"), (m * 2, r"lie in \[0, 1\]"), (m * np.nan, "finite"),
                       (np.zeros((8, 8)), "empty"), (np.ones((8, 8)), "full")]:
        with pytest.raises(ImageError, match=words):
            masks.check_mask(bad, 8, "--mask")
    soft = np.full((8, 8), 0.5, np.float32)
    np.testing.assert_array_equal(masks.check_mask(soft, 8), soft)  # neither all 0 nor all 1


# ---------------------------------------------------------------------------------------------
# Procedural masks and specs


def test_rectangle_area_and_position():
    m = masks.rectangle(10, 0.2, 0.3, 0.5, 0.4)  # rows with centres in [0.2, 0.7): 2..6; columns in [0.3, 0.7): 3..6
    want = np.zeros((10, 10), np.float32); want[2:7, 3:7] = 1
    np.testing.assert_array_equal(m, want)
    assert masks.rectangle(64, 0.25, 0.25, 0.5, 0.5).sum() == 32 * 32
    with pytest.raises(ImageError, match="leaves the image"):
        masks.rectangle(10, 0.6, 0, 0.5, 0.1)
    with pytest.raises(ImageError, match="in \\[0, 1\\]"):
        masks.rectangle(10, -0.1, 0, 0.5, 0.1)
    with pytest.raises(ImageError, match="covers no pixel"):
        masks.rectangle(10, 0.21, 0.21, 0.02, 0.02)


@pytest.mark.parametrize("n", [6, 7])
def test_halves_are_complements_with_the_expected_areas(n):
    left, right, top, bottom = (masks.half(n, s) for s in ("left", "right", "top", "bottom"))
    np.testing.assert_array_equal(left + right, np.ones((n, n)))
    np.testing.assert_array_equal(top + bottom, np.ones((n, n)))
    assert left.sum() == n * (n // 2) and right.sum() == n * (n - n // 2)
    np.testing.assert_array_equal(top, left.T)
    assert left[:, 0].all() and right[:, -1].all() and top[0].all() and bottom[-1].all()
    with pytest.raises(ImageError, match="left, right, top, bottom"):
        masks.half(n, "middle")


def test_ellipse_pixel_counts():
    # A circle of radius 2 px centred between pixels 3 and 4: centre offsets from {±0.5, ±1.5}, a² + b² <= 4
    # -> the 4 with (±0.5, ±0.5) and the 8 with one ±1.5: 12 pixels.
    m = masks.ellipse(8, 0.5, 0.5, 0.25, 0.25)
    assert m.sum() == 12 and m[2:6, 2:6].sum() == 12 and m[3:5, 3:5].all()
    # radius_y 3 px, radius_x 2 px, same centre. Rows at ±0.5: |x| <= 2·sqrt(1 - 1/36) = 1.97 -> 4 pixels;
    # ±1.5: 2·sqrt(0.75) = 1.73 -> 4; ±2.5: 2·sqrt(1 - 25/36) = 1.11 -> 2; ±3.5: outside. 2·(4 + 4 + 2) = 20.
    m2 = masks.ellipse(8, 0.5, 0.5, 3 / 8, 2 / 8)
    assert m2.sum() == 20 and m2[1:7, 2:6].sum() == 20 and m2[0].sum() == m2[7].sum() == 0
    assert m2[1].sum() == 2 and m2[1, 3:5].all() and m2[2].sum() == 4
    with pytest.raises(ImageError, match="radii must be > 0"):
        masks.ellipse(8, 0.5, 0.5, 0.0, 0.2)


def test_from_spec_parses_each_form(tmp_path):
    np.testing.assert_array_equal(masks.from_spec("rect:0.25,0.25,0.5,0.5", 16), masks.rectangle(16, .25, .25, .5, .5))
    np.testing.assert_array_equal(masks.from_spec(" half:Right ", 16), masks.half(16, "right"))
    np.testing.assert_array_equal(masks.from_spec("ellipse:0.5,0.5,0.3,0.2", 16), masks.ellipse(16, .5, .5, .3, .2))
    path = _save(tmp_path, "m.png", _pattern(40), "L")
    np.testing.assert_array_equal(masks.from_spec(path, 40), _pattern(40))
    for bad, words in [("star:1,2", "rect:TOP,LEFT,HEIGHT,WIDTH, half:left"), ("rect:0.1,0.2", "expected 4"),
                       ("ellipse:a,b,c,d", "expected 4"), ("rect:0,0,1,1", "full"), ("half:", "the side must")]:
        with pytest.raises(ValueError, match=words):  # ImageError is a ValueError
            masks.from_spec(bad, 16)
    with pytest.raises(FileNotFoundError, match="no mask image"):
        masks.from_spec(str(tmp_path / "missing.png"), 16)


# ---------------------------------------------------------------------------------------------
# Resize


def test_resize_mask_down_preserves_the_mean_and_up_is_bilinear():
    m = np.random.default_rng(5).random((48, 48)).astype(np.float32)
    np.testing.assert_allclose(masks.resize_mask(m, 12), m.reshape(12, 4, 12, 4).mean(axis=(1, 3)), atol=TOL)
    for size in (20, 7, 47):  # ratios that do not divide: exact area weights, mean preserved
        out = masks.resize_mask(m, size)
        assert out.shape == (size, size)
        np.testing.assert_allclose(float(out.mean()), float(m.mean()), rtol=TOL)
        assert float(out.min()) >= m.min() - TOL and float(out.max()) <= m.max() + TOL
    up = masks.resize_mask(m, 96)
    np.testing.assert_allclose(up, jax.image.resize(m, (96, 96), "linear"), atol=TOL)
    np.testing.assert_array_equal(masks.resize_mask(m, 48), m)


def test_resize_mask_stacks_and_jit():
    m = np.stack([masks.half(32, "left"), masks.ellipse(32, 0.5, 0.5, 0.3, 0.3)])[..., None]  # [2, 32, 32, 1]
    f = jax.jit(lambda x: masks.resize_mask(x, 8))
    out = f(m)
    assert out.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(out[..., 0].mean(axis=(1, 2)), m[..., 0].mean(axis=(1, 2)), rtol=TOL)
    np.testing.assert_allclose(out[0, :, :4, 0], 1.0, atol=TOL)
    np.testing.assert_allclose(masks.resize_mask(m, (8, 16)).shape, (2, 8, 16, 1))
