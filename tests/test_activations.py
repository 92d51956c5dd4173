"""Activation-tensor operations (I_att) as data: exact formulas, the skip image carried, jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import activations

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def G():
    """A small random generator (16x16; points b4, b8, b16), as tests/test_apps.py's."""
    import flax.traverse_util

    from i2spp_jax import generator

    cfg = generator.GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channels=(32, 16, 16), mapping_layers=2)
    flat = flax.traverse_util.flatten_dict(generator.init_params(cfg, jax.random.PRNGKey(0)))
    for i, path in enumerate(sorted(flat)):
        if path[-1] == "noise_strength":
            flat[path] = jnp.full(flat[path].shape, 0.3)
        elif path[-1] == "bias" and "affine" not in path:
            flat[path] = 0.1 * jax.random.normal(jax.random.PRNGKey(i), flat[path].shape)
    return generator.Generator(params=flax.traverse_util.unflatten_dict(flat), config=cfg)


@pytest.fixture(scope="module")
def pair(G):
    ws = G.mapping(jax.random.normal(jax.random.PRNGKey(3), (2, G.z_dim)))
    return ws[:1], ws[1:]


def _acts(G, ws):
    return G.synthesis(ws, noise="const", return_activations=True)


def test_mix_formulas_on_tensors():
    a = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4))
    b = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 4))
    img_a = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 3))
    img_b = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 4, 3))
    other = {"x": b, "img": img_b}
    m = np.zeros((16, 16), np.float32)
    m[:, :8] = 1  # left half at twice the tensor's size: area-resized to exactly the left half
    x, img = activations.spatial_copy(m, other).apply(a, img_a)
    np.testing.assert_allclose(x[:, :, :4], a[:, :, :4], **TOL)
    np.testing.assert_allclose(x[:, :, 4:], b[:, :, 4:], **TOL)
    np.testing.assert_allclose(img[:, :, :2], img_a[:, :, :2], **TOL)
    np.testing.assert_allclose(img[:, :, 2:], img_b[:, :, 2:], **TOL)
    x, img = activations.average(0.25, other).apply(a, img_a)
    np.testing.assert_allclose(x, 0.25 * a + 0.75 * b, **TOL)
    np.testing.assert_allclose(img, 0.25 * img_a + 0.75 * img_b, **TOL)
    ch = np.array([1, 0, 0, 1], np.float32)
    x, img = activations.channel_copy(ch, other).apply(a, img_a)
    np.testing.assert_allclose(x, a * ch + b * (1 - ch), **TOL)
    np.testing.assert_allclose(img, 0.5 * img_a + 0.5 * img_b, **TOL)  # the share of channels from A


def test_copy_at_the_last_block_output_gives_the_other_image_exactly(G, pair):
    """M = 0 at the last block's output (features and skip image) is B's rendering: the skip image
    is carried, so nothing of A survives; M = 1 is A's."""
    wa, wb = pair
    img_a, _ = _acts(G, wa)
    img_b, acts_b = _acts(G, wb)
    point = f"b{G.img_resolution}.img"
    other = activations.capture(acts_b, point)
    zeros = np.zeros((G.img_resolution,) * 2, np.float32)
    np.testing.assert_allclose(G.synthesis(wa, edits={point: activations.spatial_copy(zeros, other)}), img_b, **TOL)
    np.testing.assert_allclose(G.synthesis(wa, edits={point: activations.spatial_copy(1 + zeros, other)}), img_a,
                               **TOL)


def test_skip_image_is_carried_at_a_mid_point(G, pair):
    """At b8.img (mid-network) a full copy from B followed by A's later layers differs from a copy
    of the features alone: the skip image matters. With B's ws everywhere it reproduces B."""
    wa, wb = pair
    img_b, acts_b = _acts(G, wb)
    point = "b8.img"
    other = activations.capture(acts_b, point)
    zeros = np.zeros((8, 8), np.float32)
    out = G.synthesis(wb, edits={point: activations.spatial_copy(zeros, other)})
    np.testing.assert_allclose(out, img_b, **TOL)
    with_skip = G.synthesis(wa, edits={point: activations.spatial_copy(zeros, other)})
    features_only = G.synthesis(wa, edits={point: lambda t: t * 0 + acts_b[point]})  # img point edits img
    assert float(jnp.max(jnp.abs(with_skip - features_only))) > 1e-3


def test_data_edits_take_the_jitted_path_and_vmap_and_differentiate(G, pair):
    wa, wb = pair
    _, acts_b = _acts(G, wb)
    point = "b16.x"
    other = activations.capture(acts_b, point)
    m = jnp.zeros((16, 16)).at[:, :8].set(1.0)
    edit = activations.spatial_copy(m, other)
    direct = activations.Mix  # the functional core with the same edit
    from i2spp_jax import generator as gen

    ref = gen.synthesis(G.config, G.params, wa, noise="const", edits={point: edit})
    np.testing.assert_allclose(G.synthesis(wa, edits={point: edit}), ref, **TOL)
    assert direct is activations.Mix

    # vmapped over two images with a mask and a B each
    masks = jnp.stack([m, 1 - m])
    others = jax.tree.map(lambda t: jnp.concatenate([t, t]), other)
    ws2 = jnp.concatenate([wa, wa])

    def one(w, mask, oth):
        return G.synthesis(w[None], edits={point: activations.spatial_copy(mask, oth)})[0]

    batched = jax.jit(jax.vmap(one))(ws2, masks, jax.tree.map(lambda t: t, others))
    np.testing.assert_allclose(batched[0], ref[0], **TOL)
    flipped = gen.synthesis(G.config, G.params, wa, noise="const", edits={point: activations.spatial_copy(1 - m, other)})
    np.testing.assert_allclose(batched[1], flipped[0], **TOL)

    # differentiable in A's latent and in the mask
    g_w = jax.grad(lambda w: jnp.sum(G.synthesis(w, edits={point: edit})))(wa)
    g_m = jax.grad(lambda mm: jnp.sum(G.synthesis(wa, edits={point: activations.spatial_copy(mm, other)})))(m)
    assert np.isfinite(g_w).all() and float(jnp.abs(g_w).sum()) > 0
    assert np.isfinite(g_m).all() and float(jnp.abs(g_m).sum()) > 0


def test_capture_rejects_unknown_points(G, pair):
    _, acts = _acts(G, pair[0])
    with pytest.raises(ValueError, match="unknown activation point"):
        activations.capture(acts, "b8.y")
    with pytest.raises(ValueError, match="unknown activation point"):
        activations.capture(acts, "b2048.x")
