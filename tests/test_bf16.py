"""The bf16 mode (issue 9): G's and VGG's convolutions in bfloat16, everything else float32, and the
engine's float32 tail at the end of each phase."""

import collections
import json
import os
import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax import activations, embed, generator
from i2spp_jax import vgg as vgg_lib
from test_embed import assert_trees_equal, n_mse, targets, tiny_generator, w_mse


def conv_dtypes(fn, *args, primitive: str = "conv_general_dilated") -> collections.Counter:
    """{"in/kernel->out": count} over the convolutions (or other products) of fn's jaxpr, nested ones
    (custom-gradient functions) included."""
    def eqns(jaxpr):
        for e in jaxpr.eqns:
            yield e
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                yield from eqns(sub)
    return collections.Counter(f"{e.invars[0].aval.dtype}/{e.invars[1].aval.dtype}->{e.outvars[0].aval.dtype}"
                               for e in eqns(jax.make_jaxpr(fn)(*args).jaxpr) if e.primitive.name == primitive)


def rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("fused_modconv,up_method,torgb_method", [
    (False, "transposed", "conv"), (True, "transposed", "conv"), (False, "polyphase", "conv"),
    (False, "transposed", "matmul")])
def test_synthesis_convolves_in_bf16_and_returns_a_float32_image(fused_modconv, up_method, torgb_method):
    # polyphase: its folded kernel stays bf16 too; matmul: so do the ToRGB's matrix products
    G = tiny_generator().replace(up_method=up_method, torgb_method=torgb_method)
    cfg = G.config
    ws = G.w_avg + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (2, G.num_ws, G.w_dim))
    synth = lambda w, **kw: generator.synthesis(cfg, G.params, w, fused_modconv=fused_modconv,  # noqa: E731
                                                 up_method=up_method, torgb_method=torgb_method, **kw)
    f32 = conv_dtypes(synth, ws)
    n_conv = sum(f32.values())
    bf16 = conv_dtypes(lambda w: synth(w, dtype="bfloat16"), ws)
    assert f32 == {"float32/float32->float32": n_conv}
    assert bf16 == {"bfloat16/bfloat16->bfloat16": n_conv}  # none promoted back to float32 on the way
    if torgb_method == "matmul":  # one product per ToRGB layer, bf16 in and float32 out (the skip image's)
        mm = conv_dtypes(lambda w: synth(w, dtype="bfloat16"), ws, primitive="dot_general")
        assert mm["bfloat16/bfloat16->float32"] == len(cfg.block_resolutions)
    a = tiny_generator().synthesis(ws, fused_modconv=fused_modconv)  # the reference's up-sampling, float32
    b = G.synthesis(ws, fused_modconv=fused_modconv, dtype="bfloat16")
    assert b.dtype == jnp.float32
    assert 1e-4 < rel(b, a) < 5e-2  # bf16 rounding (8 bits of mantissa), and the same network


def test_an_edit_mixing_in_float32_data_leaves_the_network_bf16():
    G = tiny_generator()
    cfg = G.config
    ws = G.w_avg + 0.5 * jax.random.normal(jax.random.PRNGKey(2), (1, G.num_ws, G.w_dim))
    point = cfg.activation_names[2]
    _, acts = G.synthesis(ws, return_activations=True)
    other = {"x": acts[point], "img": None}  # float32 tensors of another render
    edit = {point: activations.Mix(mask=jnp.ones((4, 4)), other=other)}
    bf16 = conv_dtypes(lambda w: generator.synthesis(cfg, G.params, w, edits=edit, dtype="bfloat16"), ws)
    assert set(bf16) == {"bfloat16/bfloat16->bfloat16"}


def test_vgg_features_in_bf16_are_float32_and_close():
    vgg = vgg_lib.random_vgg16(jax.random.PRNGKey(0))
    img = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1, maxval=1)
    a = vgg.features(img)
    low = vgg.replace(compute_dtype="bfloat16")
    b = low.features(img)
    assert set(conv_dtypes(lambda x: low.features(x)["conv3_3"], img)) == {"bfloat16/bfloat16->bfloat16"}
    for name in a:
        assert b[name].dtype == jnp.float32
        assert 1e-4 < rel(b[name], a[name]) < 5e-2, name
    with pytest.raises(ValueError, match="compute_dtype"):
        vgg_lib.VGG16(params=vgg.params, preprocessing="keras", compute_dtype="float16")


def run(G, x, v0, phases, **kw):
    return embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, **kw)


def test_bf16_mode_runs_its_float32_tail_in_float32():
    """float32_tail=1 is the float32 run bit for bit; tail 0 and tail 0.5 share their bf16 first half
    bit for bit and part where the tail begins; a multi-step dispatch stops at that switch."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = (w_mse(8), n_mse(4))
    f32 = run(G, x, v0, phases)
    all_tail = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=1.0)
    assert_trees_equal(all_tail.vars, f32.vars)
    bf16 = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.0)
    half = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.5)
    assert [p.float32_steps for p in half.phases] == [4, 2] and [p.float32_steps for p in bf16.phases] == [0, 0]
    loss = {k: r.history["loss"] for k, r in (("f32", f32), ("bf16", bf16), ("half", half))}
    np.testing.assert_array_equal(half.history["loss"][:4], bf16.history["loss"][:4])
    assert not np.allclose(bf16.history["loss"][:4], f32.history["loss"][:4], rtol=1e-4)  # bf16 did run
    # iteration 4 of the W+ phase is the tail's first: float32 rounding from there on, not bf16's
    assert not np.allclose(half.history["loss"][4:8], bf16.history["loss"][4:8], rtol=1e-4), loss
    # the same run with 3 iterations per dispatch switches at iteration 4 too (not after the dispatch)
    scan = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.5, steps_per_call=3)
    np.testing.assert_allclose(scan.history["loss"], half.history["loss"], rtol=1e-5)
    # the same optimisation: every iteration's loss within 3% of float32's (measured: 1.6% at most; Adam's
    # first steps move each entry by about lr·sign(g), so W+ itself parts where a gradient is near 0)
    np.testing.assert_allclose(half.history["loss"], f32.history["loss"], rtol=0.03)


def test_bf16_settings_are_checked():
    with pytest.raises(ValueError, match="compute_dtype"):
        dataclasses.replace(embed.W_l(10), compute_dtype="float16")
    with pytest.raises(ValueError, match="float32_steps"):
        dataclasses.replace(embed.W_l(10), compute_dtype="bfloat16", float32_steps=11)
    G = tiny_generator()
    x = targets(G, 1)
    with pytest.raises(ValueError, match="float32_tail"):
        run(G, x, embed.initial_variables(G, 1), (w_mse(2),), compute_dtype="bfloat16", float32_tail=1.5)


@pytest.mark.slow  # an end-to-end run of a command: `pytest -m slow`
def test_reconstruct_runs_and_records_the_bf16_mode(tmp_path):
    from test_embed_reconstruct import smoke

    m, _, out = smoke(tmp_path, compute_dtype="bfloat16", float32_tail=0.5)
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved["config"]["compute_dtype"] == "bfloat16"
    assert [(p["compute_dtype"], p["num_steps"], p["float32_steps"]) for p in saved["phases"]] == [
        ("bfloat16", 4, 2), ("bfloat16", 3, 2)]
    assert 5 < m["targets"]["rendered"]["final"]["psnr"] < 60


def test_float32_runs_keep_the_fingerprints_of_earlier_versions():
    """Phase gained compute_dtype and float32_steps: at their float32 values a phase's key is the repr
    an earlier version wrote into run.json and checkpoints, so that its runs resume; a bf16 phase's
    key names them. The same for the commands' settings."""
    from experiments import presets
    from experiments.reconstruct import ReconstructConfig

    for p in (embed.W_l(10), embed.Mk_n(5, masks="known", y="previous")):
        assert embed.phase_key(p) == repr(p).replace(", compute_dtype='float32', float32_steps=0", "")
        assert "compute_dtype" not in embed.phase_key(p)
        low = dataclasses.replace(p, compute_dtype="bfloat16", float32_steps=1)
        assert "compute_dtype='bfloat16', float32_steps=1" in embed.phase_key(low)
    settings = presets.run_settings(ReconstructConfig(), exclude=("out",))
    assert "compute_dtype" not in settings and "float32_tail" not in settings and "w_lr" in settings
    low = presets.run_settings(ReconstructConfig(compute_dtype="bfloat16"), exclude=("out",))
    assert (low["compute_dtype"], low["float32_tail"]) == ("bfloat16", 0.1)
