"""StyleGAN (v1): the port equals the official TensorFlow G_style on ../shared/parity/tf (sg1_r32, and
sg1_r128 whose 128x128 block up-samples with the fused transposed convolution)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import stylegan1
from i2spp_jax.formats import stylegan1 as reader
from i2spp_jax.formats.stylegan2 import ConversionError

RTOL = 1e-5  # norm of the difference over the norm of the reference; measured <= 2.2e-6


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _nchw(img):
    return np.asarray(img).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name, layers", [("sg1_r32", 8), ("sg1_r128", 12)])
def test_g_style_equals_the_official_network(tf_dir, name, layers):
    cfg, params = reader.read_file(os.path.join(tf_dir, f"{name}.pkl"))
    ref = np.load(os.path.join(tf_dir, f"{name}.reference.npz"))
    assert cfg.num_ws == layers and len(stylegan1.stored_noise(cfg, params)) == layers
    ws = stylegan1.mapping(cfg, params, ref["z"])
    assert _rel(ws, ref["w"]) < RTOL
    images = {
        "img_psi1": ws,
        "img_psi07": stylegan1.mapping(cfg, params, ref["z"], truncation_psi=0.7),  # cutoff 8, G_style's default
        "img_psi07_cut2": stylegan1.mapping(cfg, params, ref["z"], truncation_psi=0.7, truncation_cutoff=2),
        "img_synth_w": jnp.asarray(ref["w"]),
        "img_synth_wplus": jnp.asarray(ref["w_plus"]),  # every layer's w differs: which style drives which layer
    }
    for key, w in images.items():
        assert _rel(_nchw(stylegan1.synthesis(cfg, params, w)), ref[key]) < RTOL, key
    # the fused transposed convolution is what the official graph computes, and it is another function
    unfused = stylegan1.synthesis(stylegan1.StyleGAN1Config(**{**cfg.__dict__, "fused_scale_from": 10 ** 6}),
                                  params, ws)
    assert _rel(_nchw(unfused), ref["img_psi1_fused_scale_off"]) < RTOL
    if name == "sg1_r128":
        assert _rel(ref["img_psi1_fused_scale_off"], ref["img_psi1"]) > 1e-3
        assert _rel(_nchw(unfused), ref["img_psi1"]) > 1e-3
    G_cfg, G_params = reader.read_file(os.path.join(tf_dir, f"{name}.pkl"), network="G")
    got = stylegan1.synthesis(G_cfg, G_params, stylegan1.mapping(G_cfg, G_params, ref["z"]))
    assert _rel(_nchw(got), ref["img_G_psi1"]) < RTOL


def test_noise_is_an_input(tf_dir):
    cfg, params = reader.read_file(os.path.join(tf_dir, "sg1_r32.pkl"))
    ws = stylegan1.mapping(cfg, params, np.ones((2, cfg.z_dim), np.float32))
    stored = stylegan1.synthesis(cfg, params, ws)
    none = stylegan1.synthesis(cfg, params, ws, noise="none")
    zeros = stylegan1.synthesis(cfg, params, ws, noise=[np.zeros(s, np.float32) for s in cfg.noise_shapes])
    np.testing.assert_allclose(none, zeros, rtol=0, atol=0)
    assert float(jnp.abs(stored - none).max()) > 1e-3


def test_a_stylegan2_pickle_is_not_g_style(tf_dir):
    with pytest.raises(ConversionError, match="not StyleGAN \\(v1\\)'s G_style"):
        reader.read_file(os.path.join(tf_dir, "sg2_r32.pkl"))


# --- behind the Generator face: load_generator, the converter, the engine, the applications ------


def _v1(tf_dir, name="sg1_r32"):
    import i2spp_jax

    return i2spp_jax.load_generator(os.path.join(tf_dir, f"{name}.pkl"))


def test_load_generator_gives_the_same_face_and_numbers(tf_dir):
    G = _v1(tf_dir)
    ref = np.load(os.path.join(tf_dir, "sg1_r32.reference.npz"))
    assert type(G).__name__ == "StyleGAN1Generator" and G.generation == 1
    assert (G.num_ws, G.z_dim, G.w_dim, G.img_resolution, G.img_channels) == (8, 64, 64, 32, 3)
    assert len(G.noise_names) == len(G.noise_shapes) == G.num_ws == 8  # one noise map per layer
    assert G.noise_shapes[:3] == [(4, 4), (4, 4), (8, 8)] and G.w_avg.shape == (64,)
    assert _rel(_nchw(G.synthesis(ref["w_plus"], noise="const")), ref["img_synth_wplus"]) < RTOL
    assert _rel(_nchw(G.synthesis(G.mapping(ref["z"], truncation_psi=0.7))), ref["img_psi07"]) < RTOL  # cutoff 8
    assert _rel(_nchw(G.synthesis(G.mapping(ref["z"], 0.7, truncation_cutoff=2))), ref["img_psi07_cut2"]) < RTOL
    # explicit maps: the stored ones give the stored result; "none" and zeros agree; fused_modconv is accepted
    ws = jnp.asarray(ref["w"])
    np.testing.assert_allclose(G.synthesis(ws, noise=list(G.noise_const)), G.synthesis(ws), rtol=0, atol=1e-6)
    zeros = [np.zeros(s, np.float32) for s in G.noise_shapes]
    np.testing.assert_array_equal(G.synthesis(ws, noise="none", fused_modconv=False), G.synthesis(ws, noise=zeros))
    drawn = G.make_noise(jax.random.PRNGKey(0), batch=4)
    assert [tuple(m.shape) for m in drawn] == [(4,) + s for s in G.noise_shapes]
    with pytest.raises(ValueError, match="8 \\(one per layer\\)"):
        G.synthesis(ws, noise=zeros[:7])


def test_the_converter_writes_a_v1_checkpoint(tf_dir, tmp_path):
    import subprocess
    import sys

    import i2spp_jax
    from experiments import cli

    dst = str(tmp_path / "v1")
    p = subprocess.run([sys.executable, "-m", "converters.stylegan2", f"--src={os.path.join(tf_dir, 'sg1_r128.pkl')}",
                        f"--dst={dst}"], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "converting Gs" in p.stdout and "StyleGAN (v1), 128x128x3" in p.stdout and "12 noise maps" in p.stdout
    err = float(p.stdout.split("reference_rel_error: ")[1].split()[0])
    assert err < RTOL  # the reference found beside the pickle: the fused 128x128 block included
    config = cli.generator_config(dst)
    assert isinstance(config, stylegan1.StyleGAN1Config) and config.fused_scale_from == 128
    G = i2spp_jax.load_generator(dst)
    ref = np.load(os.path.join(tf_dir, "sg1_r128.reference.npz"))
    assert _rel(_nchw(G.synthesis(G.mapping(ref["z"]))), ref["img_psi1"]) < RTOL


def test_activation_points_hold_the_layer_each_w_drives(tf_dir):
    """Changing W+ layer j alone changes the tensor at config.activation_point(j) and leaves the point
    before it untouched; returned activations are the taps, and an edit continues from its tensor."""
    from i2spp_jax import activations

    G = _v1(tf_dir)
    cfg = G.config
    ws = jnp.asarray(np.load(os.path.join(tf_dir, "sg1_r32.reference.npz"))["w_plus"][:1])
    _, acts = G.synthesis(ws, return_activations=True)
    assert sorted(acts) == sorted(cfg.activation_names) and len(acts) == G.num_ws
    for j in range(1, G.num_ws):
        moved = ws.at[:, j].add(0.5)
        _, acts2 = G.synthesis(moved, return_activations=True)
        here, before = cfg.activation_point(j), cfg.activation_point(j - 1)
        assert float(jnp.abs(acts2[here] - acts[here]).max()) > 1e-3, j
        np.testing.assert_array_equal(acts2[before], acts[before])
    # B's tensor at b8.x spliced into A, with B's W+ and noise after it: B's image, not A's
    point = "b8.x"
    ws_b = ws.at[:, :].add(0.3)
    img_b, acts_b = G.synthesis(ws_b, return_activations=True)
    later = np.arange(G.num_ws) > cfg.activation_names.index(point)
    mixed_ws = jnp.where(later[None, :, None], ws_b, ws)
    edit = {point: activations.spatial_copy(np.zeros((32, 32)), activations.capture(acts_b, point))}
    np.testing.assert_allclose(G.synthesis(mixed_ws, edits=edit), img_b, atol=1e-5)
    assert float(jnp.abs(G.synthesis(mixed_ws) - img_b).max()) > 1e-2


def test_the_papers_layer_numbers_on_its_own_generator():
    """A 1024x1024 StyleGAN: 18 W+ layers, 18 noise maps, and the paper's numbers taken as they are."""
    from types import SimpleNamespace

    from i2spp_jax import layers
    from i2spp_jax.apps.feature_transfer import later_noise

    cfg = stylegan1.StyleGAN1Config(img_resolution=1024, channels=(512,) * 5 + (256, 128, 64, 32))
    G = SimpleNamespace(num_ws=cfg.num_ws, config=cfg, noise_names=cfg.noise_names)
    assert cfg.num_ws == len(cfg.noise_names) == 18
    assert list(np.flatnonzero(layers.w_mask(G, layers.INPAINT_LAYERS))) == list(range(9)) + [16, 17]
    assert list(np.flatnonzero(layers.w_mask(G, layers.SCRIBBLE_LAYERS))) == [3, 4, 5]
    assert layers.activation_point(G, layers.FEATURE_TRANSFER_LAYER) == "b8.x"  # the 4th layer: 8x8's output
    assert [layers.activation_point(G, k) for k in (1, 2, 3, 18)] == ["b4.conv0", "b4.x", "b8.conv0", "b1024.x"]
    # the noise maps of the layers after the 4th: layers 5..18
    assert later_noise(G, "b8.x") == [False] * 4 + [True] * 14
    with pytest.raises(ValueError, match="activation point 'b8.img'"):  # a StyleGAN2 point: no skip image here
        later_noise(G, "b8.img")


@pytest.mark.slow  # an end-to-end run (about 55 s on the 2-core CPU): `pytest -m slow`
def test_reconstruction_and_an_application_run_on_v1(tf_dir):
    """The engine's W+ and noise phases lower the loss on a StyleGAN (v1), in float32 and in the bf16
    mode; feature transfer combines two images at the paper's 4th layer."""
    from i2spp_jax import embed
    from i2spp_jax.apps.feature_transfer import combine

    G = _v1(tf_dir)
    ref = np.load(os.path.join(tf_dir, "sg1_r32.reference.npz"))
    target = G.synthesis(ref["w_plus"][:2], noise=G.make_noise(jax.random.PRNGKey(5), batch=2))
    v0 = embed.initial_variables(G, 2, seed=0)
    phases = (embed.W_l(20, lr=0.05, percept=0.0, resize_to=None), embed.Mk_n(20, lr=0.5, resize_to=None))
    for dtype in ("float32", "bfloat16"):
        res = embed.embed(G, target, phases=phases, init_vars=v0, log_every=0, compute_dtype=dtype)
        psnr = res.history["psnr"]
        assert np.all(psnr[19] > psnr[0] + 1) and np.all(psnr[39] > psnr[20]), (dtype, psnr[[0, 19, 20, 39]])
        assert len(res.vars["noise"]) == 8
    va = {"w_plus": jnp.asarray(ref["w_plus"][:1]), "noise": [m[None] for m in G.noise_const]}
    vb = {"w_plus": jnp.asarray(ref["w_plus"][1:2]), "noise": [m[None] for m in G.noise_const]}
    mask = np.zeros((32, 32), np.float32)
    mask[:, :16] = 1  # left half from a
    out = combine(G, va, vb, mask, point="b8.x")
    a, b = np.asarray(G.synthesis(va["w_plus"])), np.asarray(G.synthesis(vb["w_plus"]))
    assert np.abs(out - a).mean() > 1e-3 and np.abs(out - b).mean() > 1e-3  # neither image alone


def test_inside_a_callers_trace_synthesis_is_not_a_nested_jit(tf_dir):
    """As for StyleGAN2 (issue 9's trace time): under the engine's grad the network is traced into the
    caller's program, not as a nested `_synthesis_jit`, and with G an argument (as in the engine's step)
    gives the jitted method's image bit for bit."""
    G = _v1(tf_dir)
    ws = G.mapping(jax.random.normal(jax.random.PRNGKey(0), (2, G.z_dim)))
    f = lambda w: G.synthesis(w)  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(f(w))))(ws)
    names = [str(e.params.get("name", "")) for e in jaxpr.jaxpr.eqns]
    assert "_synthesis_jit" not in names and len(names) > 30, names[:10]
    inside = jax.jit(lambda G, w: G.synthesis(w))(G, ws)
    np.testing.assert_array_equal(np.asarray(inside), np.asarray(f(ws)))


def test_init_params_like_draws_the_official_initialisation(tf_dir):
    """A fresh G_style of the pickle's shapes (the untrained ceiling of evaluate_generator): N(0, 1 / lr
    multiplier) equalized-lr weights, N(0, 1) stored noise, constant ones, zero biases, noise strengths
    and w_avg; every leaf redrawn, none copied."""
    G = _v1(tf_dir)
    fresh = stylegan1.init_params_like(G.config, G.params, jax.random.PRNGKey(0))
    flat = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    old = dict(jax.tree_util.tree_flatten_with_path(G.params)[0])
    assert flat.keys() == old.keys()
    for path, leaf in flat.items():
        name = path[-1].key
        assert leaf.shape == old[path].shape and not np.array_equal(leaf, old[path]), jax.tree_util.keystr(path)
        if name in ("bias", "style_bias", "noise_strength", "w_avg"):
            np.testing.assert_array_equal(leaf, 0)
        elif name == "const":
            np.testing.assert_array_equal(leaf, 1)
    mapping_w = np.concatenate([np.ravel(fresh["mapping"][f"fc{i}"]["weight"]) for i in range(G.config.mapping_layers)])
    synthesis_w = np.concatenate([np.ravel(leaf) for path, leaf in flat.items()
                                  if path[0].key == "synthesis" and path[-1].key in ("weight", "style_weight")])
    assert abs(mapping_w.std() * G.config.mapping_lr_multiplier - 1) < 0.05 and abs(synthesis_w.std() - 1) < 0.05
    assert np.isfinite(np.asarray(stylegan1.StyleGAN1Generator(params=fresh, config=G.config).synthesis(
        G.mapping(np.ones((1, G.z_dim), np.float32))))).all()
    with pytest.raises(ValueError, match="no initialisation known"):
        stylegan1.init_params_like(G.config, {**G.params, "extra": {"gain": np.ones(3)}}, jax.random.PRNGKey(0))
