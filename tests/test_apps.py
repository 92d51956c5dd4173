"""The applications on a tiny generator: each test fails when the application is wrong (a frozen layer
moves, the hole is not ignored, a region follows the wrong image, an edit does not reach the output)."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import apps, generator, layers, losses
from i2spp_jax import masks as mask_ops
from i2spp_jax.vgg import random_vgg16

QUIET = apps.RunOptions(log=None)
R = 16


@pytest.fixture(scope="module")
def G():
    """16x16, 6 W+ layers, nonzero noise strengths (as tests/test_embed.py's tiny generator)."""
    cfg = generator.GeneratorConfig(z_dim=16, w_dim=16, img_resolution=R, channels=(16, 16, 8), mapping_layers=2)
    flat = flax.traverse_util.flatten_dict(generator.init_params(cfg, jax.random.PRNGKey(0)))
    for i, path in enumerate(sorted(flat)):
        if path[-1] == "noise_strength":
            flat[path] = jnp.full(flat[path].shape, 0.3)
        elif path[-1] == "weight" and "torgb" in path and "affine" not in path:
            flat[path] = flat[path] * 0.25
        elif path[-1] == "bias" and "affine" not in path:
            flat[path] = 0.1 * jax.random.normal(jax.random.PRNGKey(i), flat[path].shape)
    G = generator.Generator(params=flax.traverse_util.unflatten_dict(flat), config=cfg)
    z = jax.random.normal(jax.random.PRNGKey(1), (256, cfg.z_dim))
    params = G.params
    params["mapping"]["w_avg"] = jnp.mean(G.mapping(z)[:, 0], axis=0)
    return generator.Generator(params=params, config=cfg)


@pytest.fixture(scope="module")
def vgg():
    return random_vgg16(jax.random.PRNGKey(0))


def render(G, seed):
    z = jax.random.normal(jax.random.PRNGKey(seed), (1, G.z_dim))
    return np.clip(np.asarray(G.synthesis(G.mapping(z), noise=G.make_noise(jax.random.PRNGKey(seed + 1)))[0]), -1, 1)


def region_mse(a, b, m):
    m = np.asarray(m, bool)
    return float(np.mean((np.asarray(a) - np.asarray(b))[m] ** 2))


def test_layer_map_rule():
    assert [layers.paper_layer(18, k) for k in range(1, 19)] == list(range(18))
    np.testing.assert_array_equal(layers.w_mask(8, layers.INPAINT_LAYERS), [1, 1, 1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(layers.w_mask(8, layers.SCRIBBLE_LAYERS), [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(layers.w_mask(6, layers.INPAINT_LAYERS), [1, 1, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="1..18"):
        layers.paper_layer(8, 19)


def test_inpaint_ignores_the_hole_freezes_layers_and_keeps_known_pixels(G, vgg):
    truth = render(G, 5)
    hole = mask_ops.rectangle(R, 0.25, 0.25, 0.5, 0.5)
    a = truth * (1 - hole[..., None]) - hole[..., None]  # hole black
    b = truth * (1 - hole[..., None]) + hole[..., None] * np.random.RandomState(0).uniform(-1, 1, truth.shape)
    kw = dict(vgg=vgg, num_fillings=3, w_steps=6, noise_steps=6, resize_to=R, run=QUIET)
    ra, rb = apps.inpaint(G, a, hole, **kw), apps.inpaint(G, b, hole, **kw)
    # What is inside the hole does not matter: bit-identical fillings.
    np.testing.assert_array_equal(ra.images["filling"], rb.images["filling"])
    # The frozen W+ layers (paper 10-16) never move; the others do.
    init = apps.common.engine.initial_variables(G, 3, w_init=["w_avg", "uniform_0.4", "uniform_0.4"], seed=0)
    frozen = layers.w_mask(G, layers.INPAINT_LAYERS) == 0
    assert frozen.any()
    np.testing.assert_array_equal(np.asarray(ra.vars["w_plus"])[:, frozen], np.asarray(init["w_plus"])[:, frozen])
    assert np.abs(np.asarray(ra.vars["w_plus"])[:, ~frozen] - np.asarray(init["w_plus"])[:, ~frozen]).max() > 1e-4
    # Known pixels composited back exactly; different starts give different fillings.
    np.testing.assert_array_equal(ra.images["composite"][:, hole == 0], np.broadcast_to(a, (3,) + a.shape)[:, hole == 0])
    assert np.abs(ra.images["filling"][0] - ra.images["filling"][1])[hole > 0].mean() > 1e-3


def test_crossover_regions_follow_their_sources(G, vgg):
    x, y = render(G, 11), render(G, 12)
    left = mask_ops.half(R, "left")
    r = apps.crossover(G, x, y, left, vgg=vgg, w_steps=60, noise_steps=60, resize_to=R, run=QUIET)
    out = r.images["crossover"][0]
    assert region_mse(out, x, left) < 0.5 * region_mse(out, y, left)
    assert region_mse(out, y, 1 - left) < 0.5 * region_mse(out, x, 1 - left)
    swapped = apps.crossover(G, x, y, 1 - left, vgg=vgg, w_steps=60, noise_steps=60, resize_to=R, run=QUIET)
    assert region_mse(swapped.images["crossover"][0], y, left) < region_mse(swapped.images["crossover"][0], x, left)


def test_scribble_moves_only_its_layers_and_reaches_the_output(G, vgg):
    orig = render(G, 21)
    stroke = np.zeros((R, R), np.float32)
    stroke[6:9, 3:13] = 1
    scr = orig * (1 - stroke[..., None]) + stroke[..., None]
    _, emb = apps.common.reconstruct_w(G, orig, vgg=vgg, w_steps=30, resize_to=R, seed=0, run=QUIET)
    r = apps.scribble(G, orig, scr, vgg=vgg, embedding=emb, w_steps=60, noise_steps=60, resize_to=R, run=QUIET)
    np.testing.assert_array_equal(r.masks["scribbles"][0], stroke)  # found where the images differ
    free = layers.w_mask(G, layers.SCRIBBLE_LAYERS) > 0
    np.testing.assert_array_equal(np.asarray(r.vars["w_plus"])[:, ~free], np.asarray(emb["w_plus"])[:, ~free])
    inside = stroke > 0
    before = np.abs(r.images["embedding"][0] - scr)[inside].mean()
    after = np.abs(r.images["edited"][0] - scr)[inside].mean()
    assert after < 0.95 * before, (before, after)  # the edit reaches the scribbled pixels ...
    far = np.asarray(mask_ops.dilate(stroke[..., None], 3))[..., 0] == 0
    # ... and away from the scribbles the noise phase fits the original again: no worse than the embedding,
    # and better than the W+ phase left it (layers 4-6 move the whole image).
    far_err = [region_mse(r.images[k][0], orig, far) for k in ("edited", "embedding", "w_result")]
    assert far_err[0] <= far_err[1] + 1e-6 and far_err[0] < far_err[2], far_err


def test_style_transfer_lowers_the_masked_gram_distance_and_keeps_the_rest(G, vgg):
    c, s = render(G, 31), render(G, 32)
    top = mask_ops.half(R, "top")
    _, emb = apps.common.reconstruct_w(G, c, vgg=vgg, w_steps=30, resize_to=R, seed=0, run=QUIET)
    r = apps.style_transfer(G, c, s, top, vgg=vgg, embedding=emb, st_steps=60, noise_steps=60, style_weight=1e-2, lr=0.03,
                            resize_to=R, run=QUIET)

    def gram(img):
        m = jnp.asarray(top)[None, :, :, None]
        return float(losses.style_loss(vgg, jnp.asarray(img)[None], jnp.asarray(s)[None], m, mask_y=jnp.ones_like(m),
                                       resize_to=R)[0])

    assert gram(r.images["st_result"][0]) < 0.8 * gram(r.images["embedding"][0])
    # outside the mask, the noise phase brings the content back
    assert region_mse(r.images["stylized"][0], c, 1 - top) < region_mse(r.images["st_result"][0], c, 1 - top) + 1e-6


def test_feature_transfer_copies_regions_from_each_image(G, vgg):
    a, b = render(G, 41), render(G, 42)
    va = {"w_plus": G.mapping(jax.random.normal(jax.random.PRNGKey(41), (1, G.z_dim))), "noise": G.make_noise(
        jax.random.PRNGKey(42), batch=1)}
    vb = {"w_plus": G.mapping(jax.random.normal(jax.random.PRNGKey(43), (1, G.z_dim))), "noise": G.make_noise(
        jax.random.PRNGKey(44), batch=1)}
    ra, rb = apps.common.render(G, va)[0], apps.common.render(G, vb)[0]
    last = f"b{R}.img"
    zeros, ones = np.zeros((R, R), np.float32), np.ones((R, R), np.float32)
    np.testing.assert_allclose(apps.combine(G, va, vb, ones, point=last)[0], ra, atol=1e-5)
    np.testing.assert_allclose(apps.combine(G, va, vb, zeros, point=last)[0], rb, atol=1e-5)
    left = mask_ops.half(R, "left")
    out = apps.combine(G, va, vb, left, point="b8.img")[0]
    assert region_mse(out, ra, left) < region_mse(out, rb, left)
    assert region_mse(out, rb, 1 - left) < region_mse(out, ra, 1 - left)
    r = apps.feature_transfer(G, a, b, left, vgg=vgg, embeddings=(va, vb), point="b8.img", run=QUIET)
    np.testing.assert_allclose(r.images["transfer"][0], out, atol=1e-6)
    avg = apps.combine(G, va, vb, 0.5, point=last, op="average")[0]
    raw = lambda v: np.asarray(G.synthesis(v["w_plus"], noise=list(v["noise"]))[0])  # noqa: E731  (unclipped)
    np.testing.assert_allclose(avg, np.clip(0.5 * (raw(va) + raw(vb)), -1, 1), atol=2e-5)


def _bad_inputs(G):
    """(name, call, words of its error): each mistake a notebook user makes, refused before any
    optimisation with a message that names it (library audit: they were fitted as given, or ended in
    numpy's broadcast error or another argument's message)."""
    x, y = render(G, 0), render(G, 2)
    m = np.zeros((R, R), np.float32)
    m[4:12, 4:12] = 1
    steps = dict(w_steps=2, noise_steps=2, run=QUIET)
    return [
        ("uint8", lambda v: apps.crossover(G, ((x + 1) * 127.5).astype(np.uint8), y, m, vgg=v, **steps),
         ["x is an integer (uint8) image", "x / 127.5 - 1"]),
        ("0..255", lambda v: apps.crossover(G, (x + 1) * 127.5, y, m, vgg=v, **steps), ["x has values in [", "[-1, 1]"]),
        ("nan", lambda v: apps.inpaint(G, np.full_like(x, np.nan), m, vgg=v, **steps), ["image holds NaN"]),
        ("2 vs 3", lambda v: apps.crossover(G, np.stack([x, y]), np.stack([y, x, y]), m, vgg=v, **steps),
         ["batches of x 2, y 3 images"]),
        ("3 masks for 2", lambda v: apps.crossover(G, np.stack([x, y]), y, np.stack([m] * 3), vgg=v, **steps),
         ["mask is a batch of 3 masks for 2 images"]),
        ("style 2 vs 3", lambda v: apps.style_transfer(G, np.stack([x, y]), np.stack([y] * 3), m, vgg=v, st_steps=2,
                                                      noise_steps=2, embed_steps=2, run=QUIET),
         ["batches of content 2, style 3 images"]),
        ("no fillings", lambda v: apps.inpaint(G, x, m, vgg=v, num_fillings=0, **steps), ["num_fillings=0", "at least 1"]),
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_mistaken_input_is_refused_by_name(G, vgg, case):
    name, call, words = _bad_inputs(G)[case]
    with pytest.raises(ValueError) as e:
        call(vgg)
    assert all(w in str(e.value) for w in words), (name, str(e.value))


def test_a_raw_render_slightly_past_one_is_a_fair_target(G):
    """The range check refuses [0, 255] pixels, not a generator's unclipped render."""
    x = np.clip(render(G, 0), -1, 1) * 1.2
    assert apps.common.batch_of(x, G, "x").shape == (1, R, R, 3)


def test_the_engine_refuses_integer_pixels_but_takes_any_float_render(G, vgg):
    """embed() takes any float target (a random-weight generator's raw render reaches well past [-1, 1])
    but not 8-bit pixels, which it fitted as they were."""
    from i2spp_jax import embed

    x = render(G, 0)
    init = embed.initial_variables(G, 1, seed=0)
    phases = (embed.Mk_n(1),)
    with pytest.raises(ValueError, match="target_x is an integer \\(uint8\\) image"):
        embed.embed(G, ((x + 1) * 127.5).astype(np.uint8), phases=phases, init_vars=init, vgg=vgg, log=None)
    embed.embed(G, 3 * x, phases=phases, init_vars=init, vgg=vgg, log=None)
