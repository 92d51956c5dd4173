"""Eq. 1's terms: values by hand, mask semantics, batching, tracing, Gram properties, shape errors.

A random-weight VGG16 and small images keep these fast; the ImageNet weights are tested in test_vgg.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import losses
from i2spp_jax.losses import LossWeights, eq1_loss, mse_terms, perceptual_loss, style_loss
from i2spp_jax.vgg import I2S_LAYERS, random_vgg16

F32_TOL = 1e-6
BATCH_TOL = 1e-5  # a batched conv may sum in another order than a single-image one
ALL_TERMS = LossWeights(style=5e-7, mse1=1e-5, mse2=1e-5, percept=1e-5)
SIZE = 64
RESIZE = 96  # exercises the resize to VGG's side without the cost of 256


@pytest.fixture(scope="module")
def vgg():
    return random_vgg16(jax.random.key(0))


def _images(seed, n=2, size=SIZE):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.uniform(-1, 1, (n, size, size, 3)), jnp.float32) for _ in range(3)]


def _left_mask(n=2, size=SIZE, cols=16):
    """1 on the leftmost `cols` columns, 0 elsewhere: [n, size, size, 1]."""
    m = np.zeros((n, size, size, 1), np.float32)
    m[:, :, :cols] = 1.0
    return jnp.asarray(m)


def test_mse_terms_by_hand():
    img = jnp.zeros((1, 4, 4, 3))
    x = jnp.full((1, 4, 4, 3), 0.1)
    y = jnp.full((1, 4, 4, 3), -0.2)
    mask = jnp.zeros((1, 4, 4)).at[:, :, :1].set(1.0)  # a quarter of the pixels
    mse1, mse2 = mse_terms(img, x, y, mask)
    np.testing.assert_allclose(mse1, [0.25 * (0.1 * 127.5) ** 2], rtol=F32_TOL)  # [0, 255] scale
    np.testing.assert_allclose(mse2, [0.75 * (0.2 * 127.5) ** 2], rtol=F32_TOL)
    mse1, mse2 = mse_terms(img, x, y, None)
    np.testing.assert_allclose(mse1, [(0.1 * 127.5) ** 2], rtol=F32_TOL)
    np.testing.assert_allclose(mse2, [0.0])


def test_soft_mask_weights_the_difference_before_squaring():
    img, x = jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1))
    mse1, _ = mse_terms(img, x, x, jnp.full((1, 2, 2), 0.5))
    np.testing.assert_allclose(mse1, [(0.5 * 127.5) ** 2], rtol=F32_TOL)  # ||M ⊙ (G − x)||², M² = 0.25


def _eq1(vgg, img, x, y, mask, weights=ALL_TERMS, resize_to=RESIZE):
    return eq1_loss(vgg, img, x, y, mask_mse=mask, mask_percept=mask, mask_style=mask, weights=weights,
                    resize_to=resize_to)


def test_pixels_outside_every_mask_change_neither_loss_nor_gradient(vgg):
    """Masks are 1 on columns [0, 16); pixels in columns [48, 64) are beyond VGG's receptive field
    (conv3_3 sees 40 px at the 96/64 scale, 27 px here) and the resize filters, so they must not
    count. λ_mse2 = 0 here: its mask is 1 − M_m, which does count those pixels (tested below)."""
    img, x, y = _images(1)
    mask = _left_mask()
    weights = LossWeights(style=5e-7, mse1=1e-5, mse2=0.0, percept=1e-5)
    far = jnp.asarray(np.arange(SIZE)[None, None, :, None] >= 48)
    other_img, other_x, other_y = _images(2)

    def total(im, xx, yy):
        return jnp.sum(_eq1(vgg, im, xx, yy, mask, weights)[0])

    value_and_grad = jax.jit(jax.value_and_grad(total))  # one compile: op-by-op dispatch took 30 s
    loss, grad = value_and_grad(img, x, y)
    changed = [jnp.where(far, o, a) for o, a in ((other_img, img), (other_x, x), (other_y, y))]
    loss2, grad2 = value_and_grad(*changed)
    np.testing.assert_allclose(loss2, loss, rtol=F32_TOL)
    np.testing.assert_allclose(grad2, grad, rtol=F32_TOL, atol=1e-12)
    assert float(jnp.abs(grad[:, :, 48:]).max()) == 0.0
    # and the test can fail: the same change near the mask moves both
    loss3, grad3 = value_and_grad(jnp.where(~far, other_img, img), x, y)
    assert abs(float(loss3 - loss)) > 1e-3 * float(loss)
    assert not np.allclose(grad3, grad, rtol=1e-3)


def test_mse2_ignores_pixels_where_its_mask_one_minus_m_is_zero():
    img, x, y = _images(15)
    other = _images(16)[0]
    mask = _left_mask()
    mse2 = lambda im, yy: mse_terms(im, x, yy, mask)[1]  # noqa: E731
    base, grad = mse2(img, y), jax.grad(lambda im: jnp.sum(mse2(im, y)))(img)
    inside = mask > 0
    np.testing.assert_allclose(mse2(img, jnp.where(inside, other, y)), base, rtol=F32_TOL)
    np.testing.assert_allclose(jax.grad(lambda im: jnp.sum(mse2(im, y)))(jnp.where(inside, other, img)), grad,
                               rtol=F32_TOL)
    assert float(jnp.abs(mse2(img, jnp.where(inside, y, other)) - base).min()) > 1.0


@pytest.mark.parametrize("term", ["mse", "percept", "style"])
def test_each_term_ignores_pixels_where_its_mask_is_zero(vgg, term):
    img, x, y = _images(3)
    mask = _left_mask()
    far = jnp.asarray(np.arange(SIZE)[None, None, :, None] >= 48)
    other = _images(4)[0]

    def value(im, target):
        if term == "mse":
            return mse_terms(im, target, target, mask)[0]
        if term == "percept":
            return perceptual_loss(vgg, im, target, mask, resize_to=RESIZE)
        return style_loss(vgg, im, target, mask, resize_to=RESIZE)

    value = jax.jit(value)  # one compile for the three calls: op by op, VGG's took 17 s
    base = value(img, x)
    np.testing.assert_allclose(value(jnp.where(far, other, img), x), base, rtol=F32_TOL)
    np.testing.assert_allclose(value(img, jnp.where(far, other, x)), base, rtol=F32_TOL)
    grad = jax.jit(jax.grad(lambda im: jnp.sum(value(im, x))))
    g, g2 = grad(img), grad(jnp.where(far, other, img))
    np.testing.assert_allclose(g2, g, rtol=F32_TOL, atol=1e-12)


def test_all_ones_masks_equal_no_masks(vgg):
    img, x, y = _images(5)
    ones = jnp.ones((2, SIZE, SIZE, 1))
    # each form compiled once (op by op these four took 17-23 s)
    total_none, terms_none = jax.jit(lambda: eq1_loss(vgg, img, x, y, weights=ALL_TERMS, resize_to=RESIZE))()
    total_ones, terms_ones = jax.jit(lambda: _eq1(vgg, img, x, y, ones))()
    np.testing.assert_allclose(total_ones, total_none, rtol=F32_TOL)
    for k in terms_none:
        np.testing.assert_allclose(terms_ones[k], terms_none[k], rtol=F32_TOL, err_msg=k)
    percept = jax.jit(lambda m: perceptual_loss(vgg, img, x, m, resize_to=RESIZE))
    np.testing.assert_allclose(percept(ones[..., 0]), percept(None), rtol=F32_TOL)


def test_eq1_combines_the_standalone_terms(vgg):
    img, x, y = _images(6)
    mask = jax.image.resize(_left_mask(cols=40), (2, SIZE, SIZE, 1), "linear")  # soft edge
    total, terms = _eq1(vgg, img, x, y, mask)
    mse1, mse2 = mse_terms(img, x, y, mask)
    np.testing.assert_allclose(terms["mse1"], mse1, rtol=F32_TOL)
    np.testing.assert_allclose(terms["mse2"], mse2, rtol=F32_TOL)
    np.testing.assert_allclose(terms["percept"], perceptual_loss(vgg, img, x, mask, resize_to=RESIZE), rtol=BATCH_TOL)
    np.testing.assert_allclose(terms["style"], style_loss(vgg, img, y, mask, resize_to=RESIZE), rtol=BATCH_TOL)
    w = ALL_TERMS
    expected = w.style * terms["style"] + w.mse1 * mse1 + w.mse2 * mse2 + w.percept * terms["percept"]
    np.testing.assert_allclose(total, expected, rtol=F32_TOL)
    assert all(float(v.min()) > 0 for v in terms.values())


def test_zero_weights_skip_vgg(vgg):
    img, x, y = _images(7, n=1, size=16)

    def convs(weights):
        fn = lambda v, a, b, c: eq1_loss(v, a, b, c, weights=weights, resize_to=None)  # noqa: E731
        return str(jax.make_jaxpr(fn)(vgg, img, x, y)).count("conv_general_dilated")

    assert convs(LossWeights(style=0.0, mse1=1e-5, mse2=1e-5, percept=0.0)) == 0
    assert convs(LossWeights(style=5e-7, mse1=0.0, mse2=0.0, percept=0.0)) == 7  # up to conv3_3, once
    assert convs(LossWeights(style=5e-7, mse1=0.0, mse2=0.0, percept=1e-5)) == 7
    total, terms = eq1_loss(vgg, img, x, y, weights=LossWeights(mse2=1e-5, percept=0.0), resize_to=None)
    np.testing.assert_array_equal(terms["percept"], [0.0])
    np.testing.assert_allclose(total, 1e-5 * (terms["mse1"] + terms["mse2"]), rtol=F32_TOL)
    no_vgg, _ = eq1_loss(None, img, x, y, weights=LossWeights(mse2=1e-5, percept=0.0), resize_to=None)
    np.testing.assert_array_equal(no_vgg, total)  # the engine passes vgg=None for MSE-only phases


def test_batch_equals_loop_and_vmap(vgg):
    img, x, y = _images(8, n=3, size=32)
    mask = jnp.asarray(np.random.default_rng(8).uniform(0, 1, (3, 32, 32)), jnp.float32)
    loss = jax.jit(lambda a, b, c, m: _eq1(vgg, a, b, c, m, resize_to=48))  # op by op it took 38 s
    total, terms = loss(img, x, y, mask)
    for i in range(3):
        t_i, terms_i = loss(img[i:i + 1], x[i:i + 1], y[i:i + 1], mask[i:i + 1])
        np.testing.assert_allclose(t_i, total[i:i + 1], rtol=BATCH_TOL)
        for k in terms:
            np.testing.assert_allclose(terms_i[k], terms[k][i:i + 1], rtol=BATCH_TOL, err_msg=k)
    one = lambda a, b, c, m: loss(a[None], b[None], c[None], m[None])[0][0]  # noqa: E731
    np.testing.assert_allclose(jax.vmap(one)(img, x, y, mask), total, rtol=BATCH_TOL)


def test_mask_with_batch_size_one_broadcasts(vgg):
    img, x, y = _images(9)
    mask = _left_mask(n=1, cols=32)
    np.testing.assert_allclose(_eq1(vgg, img, x, y, mask)[0], _eq1(vgg, img, x, y, jnp.tile(mask, (2, 1, 1, 1)))[0],
                               rtol=F32_TOL)


def test_jitted_loss_never_retraces(vgg):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(v, img, x, y, mask):
        loss, grad = jax.value_and_grad(lambda im: jnp.sum(_eq1(v, im, x, y, mask, resize_to=None)[0]))(img)
        return loss, grad

    for seed in range(3):
        img, x, y = _images(10 + seed, size=32)
        mask = jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (2, 32, 32, 1)), jnp.float32)
        v = random_vgg16(jax.random.key(seed))  # new weights are new leaves, not a new program
        loss, _ = step(v, img, x, y, mask)
        assert np.isfinite(float(loss))


def test_gram_loss_of_an_image_with_itself_is_zero_and_symmetric(vgg):
    a, b, _ = _images(11)
    mask = _left_mask(cols=40)
    np.testing.assert_array_equal(style_loss(vgg, a, a, mask, resize_to=None), [0.0, 0.0])
    ab = style_loss(vgg, a, b, mask, resize_to=None)
    np.testing.assert_allclose(style_loss(vgg, b, a, mask, resize_to=None), ab, rtol=F32_TOL)
    assert float(ab.min()) > 0


def test_gram_by_hand():
    feats = jnp.asarray([[1.0, 2.0], [3.0, 0.0]]).reshape(1, 1, 2, 2)  # h=1, w=2, C=2
    mask = jnp.asarray([1.0, 0.5]).reshape(1, 1, 2, 1)
    expected = np.array([[1 + 1.5**2, 2.0], [2.0, 4.0]]) / (2 * (1 + 0.5**2))  # C · Σ M²
    np.testing.assert_allclose(losses.gram(feats, mask)[0], expected, rtol=F32_TOL)
    ones = jnp.ones((1, 1, 2, 1))
    np.testing.assert_allclose(losses.gram(feats, ones)[0], np.array([[10.0, 2.0], [2.0, 4.0]]) / (2 * 2),
                               rtol=F32_TOL)  # no mask: / (C · h · w)


def test_style_mask_on_y_compares_a_region_with_all_of_y():
    """"The style of all of y inside region M of G": G's left half repeats y's texture, its right half
    is something else. With mask_y = ones the distance is 0 (the area normalisation makes a half and
    the whole comparable); with the same mask on y (y's left half only) it is not."""
    p, q, r, s = (jnp.asarray(v, jnp.float32) for v in ([1.0, 2.0], [3.0, -1.0], [5.0, 5.0], [0.0, 7.0]))
    y = jnp.stack([p, q, p, q]).reshape(1, 1, 4, 2)
    g = jnp.stack([p, q, r, s]).reshape(1, 1, 4, 2)
    left = jnp.asarray([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 4, 1)
    np.testing.assert_allclose(losses.style_distance(g, y, left, jnp.ones_like(left)), [0.0], atol=1e-6)
    assert float(losses.style_distance(g, jnp.stack([r, s, p, q]).reshape(1, 1, 4, 2), left)[0]) > 1.0


def test_perceptual_loss_by_default_resizes_to_256(vgg):
    """Upwards (32 → 256) and downwards (512 → 256, antialiased, with the mask shrunk alike): the
    default equals resizing by hand with `losses.resize` and then resize_to=None."""
    img, x, _ = _images(12, n=1, size=32)
    big = lambda a: jax.image.resize(a, (1, 256, 256, 3), "linear")  # noqa: E731
    np.testing.assert_allclose(perceptual_loss(vgg, img, x, None, layers=("conv1_1",)),
                               perceptual_loss(vgg, big(img), big(x), None, layers=("conv1_1",), resize_to=None),
                               rtol=BATCH_TOL)
    assert perceptual_loss(vgg, img, x, None, layers=I2S_LAYERS, resize_to=None).shape == (1,)
    img, x, _ = _images(17, n=1, size=512)
    mask = _left_mask(n=1, size=512, cols=200)
    default = perceptual_loss(vgg, img, x, mask, layers=("conv1_1",))
    by_hand = perceptual_loss(vgg, losses.resize(img, 256), losses.resize(x, 256), losses.resize(mask, 256),
                              layers=("conv1_1",), resize_to=None)
    np.testing.assert_allclose(default, by_hand, rtol=F32_TOL)
    # and the comparison can tell shrinks apart: a plain (aliasing) subsample to 256 differs
    sub = perceptual_loss(vgg, img[:, ::2, ::2], x[:, ::2, ::2], mask[:, ::2, ::2], layers=("conv1_1",),
                          resize_to=None)
    assert abs(float(sub[0] - default[0])) > 0.05 * float(default[0])


def test_eq1_style_term_uses_mask_style_y_on_y(vgg):
    """mask_style_y masks y's features (mask_style G's): eq1's style term is style_loss(mask_y=...);
    y's pixels far outside mask_style_y no longer count, those inside it do; None means M_s."""
    img, x, y = _images(18)
    left, right = _left_mask(), 1.0 - _left_mask(cols=48)  # columns [0, 16) and [48, 64)
    other = _images(19)[0]
    near_left = jnp.asarray(np.arange(SIZE)[None, None, :, None] < 16)
    weights = LossWeights(style=5e-7, mse1=0.0, mse2=0.0, percept=0.0)

    def style(yy, mask_y):
        return eq1_loss(vgg, img, x, yy, mask_style=left, mask_style_y=mask_y, weights=weights,
                        resize_to=None)[1]["style"]

    base = style(y, right)
    np.testing.assert_allclose(base, style_loss(vgg, img, y, left, mask_y=right, resize_to=None), rtol=BATCH_TOL)
    np.testing.assert_allclose(style(y, None), style_loss(vgg, img, y, left, resize_to=None), rtol=BATCH_TOL)
    np.testing.assert_allclose(style(y, left), style(y, None), rtol=F32_TOL)
    assert float(jnp.min(jnp.abs(base - style(y, None)) / base)) > 0.01
    # y's columns [0, 16) lie 32 px from mask_y's region: beyond conv3_3's reach (a 40 px receptive
    # field, ±20 px, plus ≤ 4 px of the mask's resize to conv3_3's 16x16)
    changed_left = jnp.where(near_left, other, y)
    np.testing.assert_allclose(style(changed_left, right), base, rtol=F32_TOL)
    assert float(jnp.min(jnp.abs(style(changed_left, None) - style(y, None)) / style(y, None))) > 0.01
    changed_right = jnp.where(jnp.arange(SIZE)[None, None, :, None] >= 48, other, y)
    assert float(jnp.min(jnp.abs(style(changed_right, right) - base) / base)) > 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"mask_mse": jnp.ones((2, 32, SIZE, 1))}, r"mask_mse has shape \(2, 32, 64, 1\); expected \[2, 64, 64, 1\]"),
    ({"mask_percept": jnp.ones((2, SIZE, SIZE, 3))}, "mask_percept has shape"),
    ({"mask_style": jnp.ones((3, SIZE, SIZE))}, "mask_style has shape"),
    ({"mask_mse": jnp.ones((SIZE, SIZE))}, "mask_mse has shape"),
    ({"x": jnp.ones((2, SIZE, SIZE, 1))}, r"x has shape \(2, 64, 64, 1\); expected \(2, 64, 64, 3\)"),
    ({"y": jnp.ones((2, SIZE, 32, 3))}, "y has shape"),
    ({"img": jnp.ones((2, SIZE, SIZE, 4))}, r"img has shape \(2, 64, 64, 4\); expected \[N, H, W, 3\]"),
    ({"img": jnp.ones((SIZE, SIZE, 3))}, "img has shape"),
])  # fmt: skip
def test_bad_shapes_name_the_argument(vgg, kwargs, message):
    img, x, y = _images(13)
    args = {"img": img, "x": x, "y": y, **kwargs}
    masks = {k: v for k, v in kwargs.items() if k.startswith("mask")}
    if "img" in kwargs:
        args["x"] = args["y"] = kwargs["img"]
    with pytest.raises(ValueError, match=message):
        eq1_loss(vgg, args["img"], args["x"], args["y"], weights=ALL_TERMS, resize_to=None, **masks)


@pytest.mark.parametrize("fn, name", [(perceptual_loss, "mask"), (style_loss, "mask")])
def test_standalone_terms_name_their_mask(vgg, fn, name):
    img, x, _ = _images(14, size=16)
    with pytest.raises(ValueError, match=f"{name} has shape"):
        fn(vgg, img, x, jnp.ones((2, 8, 16)), resize_to=None)


def test_precomputed_target_features_give_the_same_loss(vgg):
    """eq1_loss(target_feats=target_features(...)) (VGG on img alone) equals the stacked pass, masks included."""
    img, x, y = _images(21)
    mask = _left_mask(cols=40)
    w = LossWeights(style=5e-7, mse1=1e-5, mse2=1e-5, percept=1e-5)
    kw = dict(mask_mse=mask, mask_percept=mask, mask_style=mask, weights=w, resize_to=RESIZE)
    total, terms = eq1_loss(vgg, img, x, y, **kw)
    feats = losses.target_features(vgg, x, y, weights=w, resize_to=RESIZE)
    total2, terms2 = eq1_loss(vgg, img, x, y, target_feats=feats, **kw)
    np.testing.assert_allclose(total2, total, rtol=1e-6)
    for k in terms:
        np.testing.assert_allclose(terms2[k], terms[k], rtol=1e-6)
    assert set(feats) == {"x", "y"} and "conv3_3" in feats["y"]


@pytest.mark.parametrize("n_in,n_out", [(1024, 256), (256, 64), (60, 20), (35, 7), (999, 333), (32, 64)])
def test_linear_resize_weights_are_jax_image_resize_s_matrix(n_in, n_out):
    """The numpy weights behind `resize`'s strided taps are the matrix jax.image.resize applies (read off
    by resizing the identity), to within one float32 rounding of the normalisation, edges included."""
    eye = np.eye(n_in, dtype=np.float32)[None, :, :, None]
    ref = np.asarray(jax.jit(lambda e: jax.image.resize(e, (1, n_out, n_in, 1), method="linear",
                                                        antialias=True))(eye))[0, :, :, 0]
    got = losses._linear_resize_weights(n_in, n_out)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=3e-8)
    assert np.array_equal(got != 0, ref != 0)


@pytest.mark.parametrize("shape,size", [((1, 1024, 1024, 3), 256), ((1, 512, 512, 3), 128), ((1, 256, 256, 1), 64),
                                        ((1, 64, 64, 3), (16, 32)), ((1, 48, 48, 3), 20), ((1, 32, 32, 3), 64)])
def test_resize_is_jax_image_resize_with_strided_taps_on_whole_factor_shrinks(shape, size):
    """`losses.resize` is jax.image.resize (linear, antialiased), values and gradients, edges included.
    A shrink by a whole factor (1024 -> 256 for VGG) runs as strided slices: no matrix product and no
    transpose of the image (issue 9: those were 1.3 ms of a 31 ms GPU step); other sizes use
    jax.image.resize itself."""
    hw = (size, size) if isinstance(size, int) else size
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    ref = lambda a: jax.image.resize(a, (a.shape[0], *hw, a.shape[3]), method="linear", antialias=True)  # noqa: E731
    ours = lambda a: losses.resize(a, size)  # noqa: E731
    got = jax.jit(ours)(x)
    assert got.shape == (shape[0], *hw, shape[3])
    np.testing.assert_allclose(got, jax.jit(ref)(x), atol=3e-7)
    r = jnp.asarray(np.random.default_rng(1).standard_normal(got.shape), jnp.float32)
    grad = lambda f: jax.jit(jax.grad(lambda a: jnp.sum(f(a) * r)))(x)  # noqa: E731
    np.testing.assert_allclose(grad(ours), grad(ref), atol=1e-7)
    whole = all(n_in % n_out == 0 and n_out < n_in for n_in, n_out in zip(shape[1:3], hw))
    jaxpr = str(jax.make_jaxpr(lambda a: losses.resize(a, size))(x))
    assert ("dot_general" in jaxpr) is not whole


def _interior_pads(jaxpr) -> int:
    """How many pad equations insert zeros between elements (interior padding), nested jaxprs included."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pad" and any(c[2] for c in eqn.params["padding_config"]):
            n += 1
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                n += _interior_pads(inner)
    return n


@pytest.mark.parametrize("n_in,n_out", [(1024, 256), (96, 32), (35, 5), (12, 4)])
def test_resize_gradient_is_the_phase_form_of_autodiffs_transpose(n_in, n_out):
    """The strided taps' gradient (`_banded_transpose`) is JAX's own transpose of them, bit for bit on the
    CPU, computed phase by phase at the output's resolution: no per-tap padding with stride - 1 zeros
    between elements (fused over both axes, 64 selects per pixel, the bf16 W+ step's slowest kernel on
    an H200: BUILD_NOTES.md, issue 9)."""
    plan = losses._band_plan(n_in, n_out)
    rng = np.random.default_rng(2)
    for axis in (1, 2):
        shape = [2, 5, 5, 3]
        shape[axis] = n_in
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        y, ref_vjp = jax.vjp(lambda a: losses._banded_forward(a, axis, *plan), x)
        y2, vjp = jax.vjp(lambda a: losses._banded(a, axis, *plan), x)
        g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(vjp(g)[0], ref_vjp(g)[0])
    x = jnp.asarray(rng.standard_normal((1, n_in, n_in, 3)), jnp.float32)
    grad = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(losses.resize(a, n_out) ** 2)))(x)
    assert _interior_pads(grad.jaxpr) == 0
    autodiff = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(losses._banded_forward(a, 1, *plan) ** 2)))(x)
    assert _interior_pads(autodiff.jaxpr) > 0  # the check can see what it forbids


def test_greyscale_images_are_vgg16s_rgb_with_three_equal_channels(vgg):
    """A 1-channel generator's images reach VGG16 as R = G = B: the loss and its gradient equal those
    of the replicated RGB image (the gradient summed over the copies)."""
    rng = np.random.default_rng(31)
    img, x, y = (jnp.asarray(rng.uniform(-1, 1, (2, SIZE, SIZE, 1)), jnp.float32) for _ in range(3))
    rgb = lambda a: jnp.repeat(a, 3, axis=-1)  # noqa: E731
    mask = _left_mask(cols=40)
    kw = dict(mask_mse=mask, mask_percept=mask, mask_style=mask, weights=ALL_TERMS, resize_to=RESIZE)

    def loss(a, to_rgb):
        f = rgb if to_rgb else (lambda t: t)
        return eq1_loss(vgg, f(a), f(x), f(y), **kw)[1]["percept"].sum()

    np.testing.assert_allclose(loss(img, False), loss(img, True), rtol=1e-6)
    grad = jax.jit(jax.grad(loss), static_argnums=1)  # compiled: run op by op it took 10 s
    g, g_rgb = grad(img, False), grad(img, True)
    np.testing.assert_allclose(g, g_rgb, rtol=1e-5, atol=1e-5 * float(jnp.abs(g_rgb).max()))
    feats = losses.target_features(vgg, x, y, weights=ALL_TERMS, resize_to=RESIZE)
    feats_rgb = losses.target_features(vgg, rgb(x), rgb(y), weights=ALL_TERMS, resize_to=RESIZE)
    np.testing.assert_allclose(feats["y"]["conv3_3"], feats_rgb["y"]["conv3_3"], rtol=1e-6)
    assert float(jnp.abs(loss(img, False))) > 0
