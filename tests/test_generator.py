"""The generator's API: noise inputs, activation edits, jit/vmap/grad, configs, the demo network."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import i2spp_jax
from i2spp_jax.generator import Generator, GeneratorConfig, init_params

ATOL_F32 = 1e-5

TINY = GeneratorConfig.from_channel_base(img_resolution=16, channel_base=256, channel_max=16, z_dim=8, w_dim=8,
                                         mapping_layers=2)


@pytest.fixture(scope="module")
def G():
    params = init_params(TINY, jax.random.PRNGKey(1))
    # Non-zero noise strengths so that noise inputs matter.
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.full_like(a, 0.5) if p[-1].key == "noise_strength" else a, params)
    return Generator(params=params, config=TINY)


@pytest.fixture(scope="module")
def ws(G):
    return G.mapping(jax.random.normal(jax.random.PRNGKey(2), (3, G.z_dim)))


def test_topology_of_ffhq_config():
    c = GeneratorConfig.from_channel_base(img_resolution=1024, z_dim=512, w_dim=512)
    assert (c.num_ws, len(c.noise_names), c.channels[0], c.channels[-1]) == (18, 17, 512, 32)
    assert c.noise_names[:3] == ["b4.conv1", "b8.conv0", "b8.conv1"]
    shapes = jax.eval_shape(lambda: init_params(c, jax.random.PRNGKey(0)))
    assert shapes["synthesis"]["b1024"]["conv0"]["noise_const"].shape == (1024, 1024)


def test_config_json_round_trip_and_validation():
    assert GeneratorConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(z_dim=8, w_dim=8, img_resolution=48, channels=(8,) * 5)
    with pytest.raises(ValueError, match="channels has 2 entries"):
        GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, channels=(8, 8))


def test_none_noise_equals_list_of_none_and_differs_from_const(G, ws):
    a = G.synthesis(ws, noise="none")
    np.testing.assert_array_equal(a, G.synthesis(ws, noise=[None] * len(G.noise_names)))
    assert float(jnp.abs(a - G.synthesis(ws, noise="const")).max()) > 1e-3


def test_per_image_noise_equals_separate_runs(G, ws):
    maps = G.make_noise(jax.random.PRNGKey(3), batch=3)  # [3, R, R] each
    batched = G.synthesis(ws, noise=maps)
    for i in range(3):
        single = G.synthesis(ws[i : i + 1], noise=[m[i] for m in maps])
        np.testing.assert_allclose(batched[i : i + 1], single, atol=ATOL_F32)


def test_make_noise_is_explicit_and_per_layer(G):
    a, b = G.make_noise(jax.random.PRNGKey(0)), G.make_noise(jax.random.PRNGKey(0))
    for x, y, shape in zip(a, b, G.noise_shapes):
        assert x.shape == shape
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[1], a[2])  # same shape, different layers, different draws


def test_fused_and_unfused_modulation_agree(G, ws):
    np.testing.assert_allclose(G.synthesis(ws, fused_modconv=True), G.synthesis(ws, fused_modconv=False),
                               atol=ATOL_F32)


@pytest.mark.parametrize("bad,match", [
    (dict(noise="random"), "the generator draws no random numbers"),
    (dict(noise=[None] * 3), "noise has 3 maps"),
    (dict(noise=["const"] * 4 + [np.zeros((5, 5))]), r"16x16 layer has shape \(1, 5, 5\)"),
    (dict(noise=["const"] * 4 + ["rand"]), "noise entry for b16.conv1"),
])
def test_bad_noise_is_named(G, ws, bad, match):
    with pytest.raises(ValueError, match=match):
        G.synthesis(ws, **bad)


def test_bad_ws_and_z_shapes(G, ws):
    with pytest.raises(ValueError, match=r"ws has shape \(3, 5, 8\)"):
        G.synthesis(ws[:, :5])
    with pytest.raises(ValueError, match=r"z has shape \(2, 3\)"):
        G.mapping(np.zeros((2, 3)))


def test_activations_can_be_read_and_replaced(G, ws):
    img, acts = G.synthesis(ws, return_activations=True)
    assert set(acts) == set(G.config.activation_names)
    assert acts["b8.x"].shape == (3, 8, 8, G.config.channels[1])
    same = G.synthesis(ws, edits={"b8.x": lambda t: t})
    np.testing.assert_allclose(same, img, atol=ATOL_F32)
    zeroed, acts2 = G.synthesis(ws, edits={"b8.x": jnp.zeros_like}, return_activations=True)
    np.testing.assert_array_equal(acts2["b8.x"], 0.0)
    assert float(jnp.abs(zeroed - img).max()) > 1e-3
    np.testing.assert_allclose(acts2["b4.x"], acts["b4.x"], atol=ATOL_F32)  # upstream untouched
    with pytest.raises(ValueError, match=r"unknown activation points \['b8.y'\]"):
        G.synthesis(ws, edits={"b8.y": jnp.zeros_like})


def test_spatial_copy_edit_has_gradients_for_both_codes(G, ws):
    """Attribute-level feature transfer: M * A + (1 - M) * B at b8.x, differentiable in both ws."""
    mask = jnp.zeros((1, 8, 8, 1)).at[:, :, :4].set(1.0)

    def mixed(w1, w2):
        _, a = G.synthesis(w1, return_activations=True)
        return G.synthesis(w2, edits={"b8.x": lambda b: mask * a["b8.x"] + (1 - mask) * b})

    # jitted by hand (a function edit runs the functional core): op by op this took 23-31 s
    g1, g2 = jax.jit(jax.grad(lambda w1, w2: jnp.sum(mixed(w1, w2) ** 2), argnums=(0, 1)))(ws[:1], ws[1:2])
    # ws layers that only feed b4/b8.conv layers of image 2 are cut off where the mask copies image 1.
    assert float(jnp.abs(g1).sum()) > 0 and float(jnp.abs(g2).sum()) > 0


def test_jit_vmap_grad(G, ws):
    f = jax.jit(lambda G, w: G.synthesis(w))
    per_image = jax.vmap(lambda w: f(G, w[None])[0])(ws)
    np.testing.assert_allclose(per_image, G.synthesis(ws), atol=ATOL_F32)
    noise = G.noise_const
    g_ws, g_noise = jax.grad(lambda w, n: jnp.mean(G.synthesis(w, noise=n) ** 2), argnums=(0, 1))(ws, noise)
    assert g_ws.shape == ws.shape and np.isfinite(g_ws).all()
    assert all(g.shape == s for g, s in zip(g_noise, G.noise_shapes))


def test_truncation_moves_toward_w_avg(G):
    z = jax.random.normal(jax.random.PRNGKey(4), (2, G.z_dim))
    ws, ws0 = G.mapping(z), G.mapping(z, truncation_psi=0.0)
    np.testing.assert_allclose(ws0, jnp.broadcast_to(G.w_avg, ws0.shape), atol=ATOL_F32)
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    np.testing.assert_allclose(cut[:, 2:], ws[:, 2:], atol=ATOL_F32)
    np.testing.assert_allclose(cut[:, :2], ws0[:, :2], atol=ATOL_F32)


def test_random_demo_generator_is_seeded_and_states_itself():
    a, b = i2spp_jax.load_generator("demo-random"), i2spp_jax.random_demo_generator.__wrapped__()  # cached, and fresh
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert (a.img_resolution, a.num_ws, a.w_dim, a.config.channels) == (64, 10, 128, (128, 128, 128, 128, 64))
    strengths = [float(a.params["synthesis"][n.split(".")[0]][n.split(".")[1]]["noise_strength"]) for n in a.noise_names]
    assert all(0.05 <= s <= 0.2 for s in strengths)
    img = a.synthesis(a.mapping(jax.random.normal(jax.random.PRNGKey(0), (4, a.z_dim))))
    assert 0.2 < float(img.std()) < 1.0  # images live in about [-1, 1]


def _upfirdn2d_autodiff(x, f, up, padding, gain):
    """ops.upfirdn2d with JAX's own transpose of the FIR slices (no custom VJP): the reference."""
    from unittest import mock

    from i2spp_jax import ops
    with mock.patch.object(ops, "_fir_1d", ops._fir_valid):
        return ops.upfirdn2d(x, f, up=up, padding=padding, gain=gain)


@pytest.mark.parametrize("f", [(1, 3, 3, 1), (1, 2, 4)])
@pytest.mark.parametrize("up,padding,gain", [(2, (2, 1, 2, 1), 4.0), (1, (0, 0, 0, 0), 1.0), (1, (1, 2, 0, -1), 1.0)])
def test_fir_custom_vjp_is_the_transpose_of_the_fir(f, up, padding, gain):
    """upfirdn2d's hand-written FIR transpose (one fused pass, issue 9) gives JAX's own gradient, first and
    second order (the trainer's R1 term differentiates a gradient), and keeps bf16 bf16."""
    from i2spp_jax import ops
    f = ops.setup_filter(f)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 11, 3)), jnp.float32)
    ours = lambda a: ops.upfirdn2d(a, f, up=up, padding=padding, gain=gain)  # noqa: E731
    ref = lambda a: _upfirdn2d_autodiff(a, f, up, padding, gain)  # noqa: E731
    np.testing.assert_array_equal(ours(x), ref(x))
    r = jnp.asarray(rng.standard_normal(ours(x).shape), jnp.float32)
    grad = lambda fn: jax.grad(lambda a: jnp.sum(fn(a) * r))  # noqa: E731
    np.testing.assert_allclose(grad(ours)(x), grad(ref)(x), rtol=1e-6, atol=1e-6)
    second = lambda fn: jax.grad(lambda a: jnp.sum(jnp.square(grad(fn)(a * a))))  # noqa: E731
    np.testing.assert_allclose(second(ours)(x), second(ref)(x), rtol=1e-5, atol=1e-5)
    g16 = jax.grad(lambda a: jnp.sum(ours(a).astype(jnp.float32) * r))(x.astype(jnp.bfloat16))
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(g16.astype(jnp.float32), grad(ref)(x), rtol=5e-2, atol=5e-2)


def test_generator_is_reverse_mode_only_as_documented(G, ws):
    """The FIR's custom VJP makes the generator reverse-mode only (README, ops): grad works, jvp raises
    JAX's own message, not a wrong number."""
    img = lambda w: G.synthesis(w, noise="const")  # noqa: E731
    assert jax.vjp(img, ws)[1](jnp.ones_like(img(ws)))[0].shape == ws.shape
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(img, (ws,), (jnp.ones_like(ws),))


def _convs(fn, *args, dilated: bool = False, depthwise: bool = False) -> int:
    """How many convolutions fn's jaxpr holds (dilated: only those that dilate their input, the
    transposed convolution's form; depthwise: only those with one group per input channel), nested
    jaxprs included."""
    def count(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated" and (
                    not dilated or tuple(eqn.params["lhs_dilation"]) != (1, 1)) and (
                    not depthwise or 1 < eqn.params["feature_group_count"] == eqn.invars[0].aval.shape[-1]):
                n += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                n += count(sub)
        return n
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def _dilated_convs(fn, *args) -> int:
    return _convs(fn, *args, dilated=True)


def _assert_same_function(G, G2, ws):
    """G2 (another way of computing G) gives G's image in both modulation forms and G's W+ gradient, and a
    jitted function of the generator compiles once for each (the setting is static: in G's treedef)."""
    assert jax.tree_util.tree_structure(G2) != jax.tree_util.tree_structure(G)
    for fused in (False, True):
        np.testing.assert_allclose(G2.synthesis(ws, fused_modconv=fused), G.synthesis(ws, fused_modconv=fused),
                                   atol=ATOL_F32)
    loss = jax.jit(jax.grad(lambda g, w: jnp.sum(jnp.square(g.synthesis(w, fused_modconv=False))), argnums=1))
    g_ref, g_2 = loss(G, ws), loss(G2, ws)
    np.testing.assert_allclose(g_2, g_ref, atol=1e-5 * float(jnp.abs(g_ref).max()))
    assert loss._cache_size() == 2


def _depthwise_convs(fn, *args) -> int:
    return _convs(fn, *args, depthwise=True)


@pytest.mark.parametrize("method", ["polyphase", "transposed_dw"])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("f", [(1, 3, 3, 1), (1, 2, 1), (1, 2, 4, 3)])  # the last not symmetric
def test_up_convolution_methods_are_the_reference(method, groups, f):
    """ops.conv2d_up2's other methods are the same function as the transposed convolution then the FIR
    (the reference's order): value and both gradients (a wrong phase order, tap offset, group layout,
    unreversed taps or gain differ by O(1)).
    - "polyphase" folds the FIR into one convolution per output phase: no dilated convolution left.
    - "transposed_dw" runs the FIR as one depthwise convolution (`ops.fir2d_depthwise`): no pad left for
      XLA to fuse, and float32 whatever the matmul precision asks."""
    from i2spp_jax import ops
    f = ops.setup_filter(f)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 6 // groups, 9)), jnp.float32)
    up = lambda m: (lambda a, k: ops.conv2d_up2(a, k, f, groups=groups, method=m))  # noqa: E731
    ref, out = up("transposed")(x, w), up(method)(x, w)
    assert out.shape == ref.shape == (2, 14, 12, 9)
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(out, ref, atol=1e-6 * scale)
    r = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    grads = lambda fn: jax.grad(lambda a, k: jnp.sum(fn(a, k) * r), argnums=(0, 1))(x, w)  # noqa: E731
    for g_out, g_ref in zip(grads(up(method)), grads(up("transposed"))):
        np.testing.assert_allclose(g_out, g_ref, atol=1e-6 * float(jnp.abs(g_ref).max()))
    if method == "polyphase":
        assert _dilated_convs(up("transposed"), x, w) == 1 and _dilated_convs(up("polyphase"), x, w) == 0
        # per axis each output phase reads ka input offsets; each kernel tap meets every other FIR tap
        # (gain 2 per axis), and those sum to 1 for a filter whose even and odd taps sum alike
        taps = ops.up2_phase_taps(3, tuple(float(v) for v in f))
        assert taps.shape[0] == 2 and taps.shape[2] == 3 and taps.shape[1] % 2 == 1
    else:
        assert _depthwise_convs(up(method), x, w) == 1 and _depthwise_convs(up("transposed"), x, w) == 0
        assert not [e for e in jax.make_jaxpr(up(method))(x, w).jaxpr.eqns if e.primitive.name == "pad"]
        with jax.default_matmul_precision("bfloat16"):
            np.testing.assert_allclose(jax.jit(up(method))(x, w), out, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("f", [(1, 3, 3, 1), (1, 2, 1), (1, 2, 4, 3)])  # the last not symmetric
@pytest.mark.parametrize("channels", [8, 32])  # two tile shapes (64x8 and 16x8 pixels per program)
def test_fir2d_pallas_is_upfirdn2d(f, channels):
    """ops.fir2d_pallas (one Pallas kernel each way; interpreted off a GPU) is upfirdn2d's FIR without
    up-sampling: value and gradient at odd map sizes, whose edges are the masks' work (a wrong tap
    order, offset or adjoint padding differs by O(1)); a channel count Triton cannot block falls back
    to upfirdn2d."""
    from i2spp_jax import ops
    f = ops.setup_filter(f)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 9, 11, channels)), jnp.float32)
    pad = ops.up2_fir_padding(3, len(f))
    ref = lambda a: ops.upfirdn2d(a, f, padding=(pad[0], pad[1]) * 2, gain=4)  # noqa: E731
    out = lambda a: ops.fir2d_pallas(a, f, padding=pad, gain=4)  # noqa: E731
    want = ref(x)
    np.testing.assert_allclose(out(x), want, atol=1e-6 * float(jnp.abs(want).max()))
    r = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    g_ref, g_out = (jax.grad(lambda a: jnp.sum(fn(a) * r))(x) for fn in (ref, out))
    np.testing.assert_allclose(g_out, g_ref, atol=1e-6 * float(jnp.abs(g_ref).max()))
    # under vmap, as the engine's step runs it (the kernel's grid gains the mapped axis)
    np.testing.assert_allclose(jax.vmap(out)(x[:, None]), jax.vmap(ref)(x[:, None]),
                               atol=1e-6 * float(jnp.abs(want).max()))
    assert "pallas_call" in str(jax.make_jaxpr(out)(x))
    assert "pallas_call" not in str(jax.make_jaxpr(out)(x[..., :3]))


def test_generator_pallas_fir_method_is_the_same_function(G, ws):
    """up_method "polyphase_last_pl": "polyphase_last" with the FIR of every block that keeps the
    transposed convolution as one Pallas kernel (`ops.fir2d_pallas`): the same image and W+ gradient."""
    Gp = G.replace(up_method="polyphase_last_pl")
    _assert_same_function(G.replace(up_method="polyphase_last"), Gp, ws)
    n_up = len(TINY.block_resolutions) - 1
    fwd = str(jax.make_jaxpr(lambda w: Gp.synthesis(w, fused_modconv=False))(ws))
    assert fwd.count("pallas_call") == 2 * (n_up - 1)  # each block but the last, in platform_dependent's 2 branches


def test_generator_depthwise_fir_methods_are_the_same_function(G, ws):
    """up_method "transposed_dw" and "polyphase_last_dw" are "transposed" and "polyphase_last" with the FIR
    as a depthwise convolution in every block that keeps the transposed convolution: the same image
    and W+ gradient in both modulation forms."""
    Gd = G.replace(up_method="transposed_dw")
    _assert_same_function(G, Gd, ws)
    img = lambda g: (lambda w: g.synthesis(w, fused_modconv=False))  # noqa: E731
    n_up = len(TINY.block_resolutions) - 1
    G_last_dw = G.replace(up_method="polyphase_last_dw")
    assert [_depthwise_convs(img(g), ws) for g in (G, Gd, G_last_dw)] == [0, n_up, n_up - 1]
    assert [_dilated_convs(img(g), ws) for g in (Gd, G_last_dw)] == [n_up, n_up - 1]
    np.testing.assert_allclose(G_last_dw.synthesis(ws, fused_modconv=False),
                               G.replace(up_method="polyphase_last").synthesis(ws, fused_modconv=False), atol=ATOL_F32)


@pytest.mark.parametrize("method", ["matmul", "reduce"])
def test_generator_torgb_method_is_static_and_the_same_function(G, ws, method):
    """Generator.torgb_method (issue 9's ToRGB levers) computes every ToRGB layer without a convolution:
    "matmul" as one matrix product per sample, "reduce" as products summed over the input channels (no
    matrix product either). Each is the same function: image and W+ gradient equal the reference's in
    both modulation forms; static (G's treedef), so compiled programs key on it."""
    Gm = G.replace(torgb_method=method)
    assert G.torgb_method == "auto"  # the default: the reference's convolution here (float32, a CPU)
    img = lambda g: (lambda w: g.synthesis(w, fused_modconv=False))  # noqa: E731
    n_torgb = len(TINY.block_resolutions)
    assert _convs(img(G), ws) - _convs(img(Gm), ws) == n_torgb  # every ToRGB, nothing else
    if method == "reduce":  # the affine layers' products only, as with the convolution
        def dots(g):
            return str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(img(g)(w))))(ws)).count("dot_general")
        assert dots(Gm) == dots(G)
    _assert_same_function(G, Gm, ws)
    with pytest.raises(ValueError, match=r"torgb_method='dense': use one of \('auto', 'conv', 'matmul', 'reduce'\)"):
        G.replace(torgb_method="dense").synthesis(ws)


def test_torgb_reduce_gradients_are_the_convolutions():
    """ops.modulated_reduce's hand-written gradient equals autodiff of the reference's modulated 1x1
    convolution for all three inputs (activations, styles, weights: the weights' is what training
    would use), at random inputs where a swapped index or a dropped style factor shows at O(1)."""
    from i2spp_jax import ops
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(k[0], (2, 5, 6, 7))
    weight = jax.random.normal(k[1], (1, 1, 7, 3))
    styles = 1.0 + 0.5 * jax.random.normal(k[2], (2, 7))
    r = jax.random.normal(k[3], (2, 5, 6, 3))
    conv = lambda x, w, s: ops.modulated_conv2d(x, w, s, demodulate=False, fused_modconv=False)[0]  # noqa: E731
    for f in (conv, ops.modulated_reduce):
        assert f(x, weight, styles).shape == (2, 5, 6, 3)
    with jax.default_matmul_precision("highest"):
        ref = jax.grad(lambda *a: jnp.sum(conv(*a) * r), argnums=(0, 1, 2))(x, weight, styles)
        got = jax.grad(lambda *a: jnp.sum(ops.modulated_reduce(*a) * r), argnums=(0, 1, 2))(x, weight, styles)
        np.testing.assert_allclose(ops.modulated_reduce(x, weight, styles), conv(x, weight, styles),
                                   rtol=ATOL_F32, atol=ATOL_F32)
    for name, a, b in zip(("x", "weight", "styles"), got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=ATOL_F32, atol=ATOL_F32 * float(jnp.abs(b).max()), err_msg=name)
    # in the bf16 mode: bf16 activations in, their cotangent bf16, the sums and the image float32
    xb = x.astype(jnp.bfloat16)
    y, vjp = jax.vjp(lambda x: ops.modulated_reduce(x, weight, styles), xb)
    assert y.dtype == jnp.float32 and vjp(r)[0].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="a 1x1 kernel is needed"):
        ops.modulated_reduce(x, jnp.ones((3, 3, 7, 3)), styles)


def test_torgb_method_auto_is_reduce_in_bf16_on_a_gpu_only(G, ws, monkeypatch):
    """A Generator's default ToRGB form is "auto": products summed over the channels ("reduce") where
    the feature maps are bfloat16 on a GPU (measured faster there, issue 9), the reference's modulated
    convolution everywhere else (float32 on a GPU, where "reduce" was slower, and any dtype off one).
    The network resolves it per call from the dtype it is given, so one G runs a bf16 mode's iterations
    and its float32 head and tail each in its own form."""
    from i2spp_jax import networks
    assert Generator(params=G.params, config=G.config).torgb_method == "auto"
    assert networks.resolve_torgb_method("auto", "bfloat16", "gpu") == "reduce"
    assert networks.resolve_torgb_method("auto", jnp.bfloat16, "gpu") == "reduce"
    assert [networks.resolve_torgb_method("auto", d, "gpu") for d in (None, "float32")] == ["conv", "conv"]
    assert [networks.resolve_torgb_method("auto", "bfloat16", b) for b in ("cpu", "tpu")] == ["conv", "conv"]
    assert [networks.resolve_torgb_method(m, "bfloat16", "gpu") for m in ("conv", "matmul")] == ["conv", "matmul"]
    assert networks.resolve_torgb_method("reduce", None, "cpu") == "reduce"
    with pytest.raises(ValueError, match="torgb_method='fast'"):
        networks.resolve_torgb_method("fast")
    n_torgb = len(TINY.block_resolutions)

    def convs(dtype):
        return _convs(lambda w: G.synthesis(w, fused_modconv=False, dtype=dtype), ws)

    here = [convs(None), convs("bfloat16")]
    assert here[0] == here[1]  # on the suite's CPU: the convolution in both dtypes
    monkeypatch.setattr(networks.jax, "default_backend", lambda: "gpu")  # traced as for a GPU
    assert convs(None) == here[0]  # float32: still the convolution
    assert convs("bfloat16") == here[0] - n_torgb  # bf16: every ToRGB layer without one


def test_up_method_auto_is_the_measured_fastest_per_backend(G, ws):
    """A Generator's default up-sampling is "auto": the last block's polyphase form on a GPU (where it
    was measured faster, issue 9) and the reference's transposed convolution elsewhere, so the CPU's
    programs (and its parity with the official code) are unchanged by the default."""
    from i2spp_jax import networks
    assert G.up_method == "auto" and Generator(params=G.params, config=G.config).up_method == "auto"
    assert networks.resolve_up_method("auto", "gpu") == "polyphase_last"
    assert [networks.resolve_up_method("auto", b) for b in ("cpu", "tpu")] == ["transposed", "transposed"]
    assert [networks.resolve_up_method(m, "gpu") for m in ("transposed", "polyphase")] == ["transposed", "polyphase"]
    with pytest.raises(ValueError, match="up_method='fast'"):
        networks.resolve_up_method("fast", "gpu")
    assert jax.default_backend() == "cpu"  # the suite's backend: auto traces the reference's order here
    img = lambda g: (lambda w: g.synthesis(w, fused_modconv=False))  # noqa: E731
    n_up = len(TINY.block_resolutions) - 1
    assert [_dilated_convs(img(g), ws) for g in (G, G.replace(up_method="transposed"))] == [n_up, n_up]
    np.testing.assert_array_equal(G.synthesis(ws), G.replace(up_method="transposed").synthesis(ws))


def test_up_method_auto_traces_the_polyphase_last_block_for_a_gpu(G, ws, monkeypatch):
    """What "auto" builds when the program is traced for a GPU (the backend faked at trace time: tracing
    needs no device): the last block's up-sampling without a dilated convolution, the others with."""
    from i2spp_jax import generator
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    n_up = len(TINY.block_resolutions) - 1
    traced = lambda m: _dilated_convs(  # noqa: E731 (un-jitted: traced afresh, no cached program)
        lambda w: generator.synthesis(G.config, G.params, w, fused_modconv=False, up_method=m), ws)
    assert [traced(m) for m in ("auto", "transposed", "polyphase_last")] == [n_up - 1, n_up, n_up - 1]


def test_generator_up_method_is_static_and_the_same_function(G, ws):
    """Generator.up_method (issue 9's up-sampling lever) changes how the programs compute, not what:
    the image and the W+ gradient equal the reference's in both modulation forms; jitted code that
    takes G retraces for it (a stale program would be the other method); unknown methods are named."""
    from i2spp_jax import ops
    Gp = G.replace(up_method="polyphase")
    _assert_same_function(G, Gp, ws)
    img = lambda g: (lambda w: g.synthesis(w, fused_modconv=False))  # noqa: E731
    n_up = len(TINY.block_resolutions) - 1
    G_last = G.replace(up_method="polyphase_last")  # the last block only
    G_last2 = G.replace(up_method="polyphase_last2")  # the last two blocks
    assert [_dilated_convs(img(g), ws) for g in (G, Gp, G_last, G_last2)] == [n_up, 0, n_up - 1, n_up - 2]
    for g in (G_last, G_last2):
        np.testing.assert_allclose(g.synthesis(ws, fused_modconv=False), G.synthesis(ws, fused_modconv=False),
                                   atol=ATOL_F32)
    with pytest.raises(ValueError, match=r"up_method='bilinear': use one of \('auto', 'transposed', 'polyphase', "
                       r"'polyphase_last', 'polyphase_last2', 'transposed_dw', 'polyphase_last_dw', 'transposed_pl', "
                       r"'polyphase_last_pl'\)"):
        G.replace(up_method="bilinear").synthesis(ws)
    with pytest.raises(ValueError, match=r"up-sampling method 'bilinear': use one of \('transposed', 'transposed_dw', "
                       r"'transposed_pl', 'polyphase'\)"):
        ops.conv2d_up2(ws[:, None, :2, None], jnp.ones((3, 3, 1, 1)), ops.setup_filter([1, 3, 3, 1]),
                       method="bilinear")


def test_tracing_inside_a_jit_neither_nests_a_jit_nor_traces_the_initialisers(G, ws, monkeypatch):
    """Issue 9's trace time: inside the caller's jit (the engine's step) `G.synthesis` traces the network
    into the caller's program, not as a nested jit (whose jaxpr grad linearises once more), and the
    stored parameters are read without flax's shape check, which traces every initialiser under
    jax.eval_shape on every apply (together 0.3-0.5 s of the W+ step's trace at config-f). With G an
    argument (as in the engine's step) the image is the jitted method's, bit for bit."""
    calls = []
    real = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: calls.append(1) or real(*a, **k))
    f = lambda w: G.synthesis(w, fused_modconv=False)  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(f(w))))(ws)
    assert calls == []
    names = [str(e.params.get("name", "")) for e in jaxpr.jaxpr.eqns]
    assert "_synthesis_jit" not in names and len(jaxpr.jaxpr.eqns) > 50, names[:10]
    inside = jax.jit(lambda G, w: G.synthesis(w, fused_modconv=False))(G, ws)  # G an argument, as in the engine
    np.testing.assert_array_equal(np.asarray(inside), np.asarray(f(ws)))


def test_a_stored_parameter_of_another_shape_is_named(G, ws):
    """Reading the parameters without flax's check keeps its refusal: a stored weight of another shape
    (weights for another architecture) is named with both shapes."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(G.params)
    key = ("synthesis", "b8", "conv0", "weight")
    flat[key] = jnp.zeros(flat[key].shape[:2] + (flat[key].shape[2] + 1, flat[key].shape[3]))
    bad = G.replace(params=traverse_util.unflatten_dict(flat))
    with pytest.raises(ValueError, match=r"b8/conv0/weight has shape \(3, 3, 17, 16\).*expects \(3, 3, 16, 16\)"):
        bad.synthesis(ws, fused_modconv=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("clamp", [None, 0.6])
@pytest.mark.parametrize("demod,noise", [(True, True), (False, False), (True, False)])
def test_layer_epilogue_recompute_is_autodiff_bit_for_bit_and_keeps_no_mask(dtype, clamp, demod, noise):
    """ops.layer_epilogue's "recompute" gradient (issue 9's rematerialisation lever) is autodiff's bit for
    bit: every input's cotangent, with the clamp active on some elements or off, with or without the
    demodulation coefficients and the noise, in float32 and bfloat16. What it keeps for the backward is
    its inputs only: no boolean mask, nothing the size of y but y (autodiff keeps the comparison)."""
    from i2spp_jax import ops
    k = jax.random.split(jax.random.PRNGKey(7), 5)
    y = jax.random.normal(k[0], (2, 6, 5, 4)).astype(dtype)
    args = (y, jax.random.uniform(k[1], (2, 4), minval=0.5, maxval=1.5) if demod else None,
            0.3 * jax.random.normal(k[2], (2, 6, 5, 1)) if noise else None, 0.1 * jax.random.normal(k[3], (4,)))
    g = jax.random.normal(k[4], y.shape).astype(dtype)
    outs, residuals = {}, {}
    for grad in ops.EPILOGUE_GRADS:
        out, vjp = jax.vjp(lambda *a: ops.layer_epilogue(*a, clamp=clamp, grad=grad), *args)  # noqa: B023
        outs[grad] = (out, vjp(g))
        residuals[grad] = [r for r in jax.tree.leaves(vjp) if hasattr(r, "dtype")]
    if clamp is not None:
        assert 0 < int(jnp.sum(jnp.abs(outs["autodiff"][0]) >= clamp)) < y.size  # the clamp bites somewhere
    for a, b in zip(jax.tree.leaves(outs["recompute"]), jax.tree.leaves(outs["autodiff"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert not any(r.dtype == bool for r in residuals["recompute"])
    assert sum(r.size >= y.size for r in residuals["recompute"]) == 1  # y itself
    assert any(r.dtype == bool and r.size == y.size for r in residuals["autodiff"])  # what "recompute" saves
    with pytest.raises(ValueError, match="grad='remat'"):
        ops.layer_epilogue(*args, grad="remat")


def test_generator_epilogue_grad_is_static_and_the_same_function(G, ws):
    """Generator.epilogue_grad: "recompute" (the default) and "autodiff" give the same image and the same W+
    and noise gradients bit for bit, through a jitted loss that compiles once for each; unknown values are
    named."""
    Ga = G.replace(epilogue_grad="autodiff")
    assert G.epilogue_grad == "recompute"
    assert jax.tree_util.tree_structure(Ga) != jax.tree_util.tree_structure(G)
    noise = G.make_noise(jax.random.PRNGKey(3), batch=ws.shape[0])
    loss = jax.jit(jax.value_and_grad(
        lambda g, w, n: jnp.sum(jnp.square(g.synthesis(w, n, fused_modconv=False) - 0.2)), argnums=(1, 2)))
    for a, b in zip(jax.tree.leaves(loss(G, ws, noise)), jax.tree.leaves(loss(Ga, ws, noise)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss._cache_size() == 2
    np.testing.assert_array_equal(G.synthesis(ws, fused_modconv=True), Ga.synthesis(ws, fused_modconv=True))
    with pytest.raises(ValueError, match=r"epilogue_grad='remat': use one of \('recompute', 'autodiff'\)"):
        G.replace(epilogue_grad="remat").synthesis(ws)
