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
    (False, "transposed", "matmul"), (False, "transposed", "reduce")])
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


def test_bf16_mode_runs_its_float32_head_in_float32():
    """float32_head=0.25 on an 8-iteration phase: iterations 0-1 are the float32 run's bit for bit,
    2-5 run in bf16, 6-7 are the float32 tail; a multi-step dispatch stops at both switches."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = (w_mse(8),)
    f32 = run(G, x, v0, phases)
    both = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.25, float32_head=0.25)
    assert [(p.float32_head_steps, p.float32_steps) for p in both.phases] == [(2, 2)]
    assert both.low_dtype_iterations == (4,) and f32.low_dtype_iterations == (0,)
    loss = {"f32": f32.history["loss"], "both": both.history["loss"]}
    np.testing.assert_array_equal(both.history["loss"][:2], f32.history["loss"][:2])
    # iteration 2 starts from the float32 run's variables, so only bf16's rounding tells it apart
    assert not np.allclose(both.history["loss"][2], f32.history["loss"][2], rtol=1e-5), loss
    tail_only = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.25)
    assert not np.array_equal(tail_only.history["loss"][:2], f32.history["loss"][:2])  # no head there
    scan = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=0.25, float32_head=0.25, steps_per_call=3)
    np.testing.assert_array_equal(scan.history["loss"][:2], f32.history["loss"][:2])
    np.testing.assert_allclose(scan.history["loss"], both.history["loss"], rtol=1e-5)
    assert scan.low_dtype_iterations == (4,)
    # a head larger than what the tail leaves takes the rest: all float32
    assert [(p.float32_head_steps, p.float32_steps) for p in run(G, x, v0, phases, compute_dtype="bfloat16",
                                                                 float32_tail=0.5, float32_head=0.6).phases] == [(4, 4)]
    with pytest.raises(ValueError, match="float32_head"):
        run(G, x, v0, phases, compute_dtype="bfloat16", float32_head=1.5)
    with pytest.raises(ValueError, match="float32_head_steps"):
        dataclasses.replace(embed.W_l(10), compute_dtype="bfloat16", float32_steps=5, float32_head_steps=6)
    # a float32 run has neither head nor tail
    assert [(p.float32_head_steps, p.float32_steps) for p in run(G, x, v0, phases, compute_dtype="float32",
                                                                 float32_head=0.5).phases] == [(0, 0)]


class Kill(Exception):
    pass


def test_bf16_mode_switches_to_float32_once_an_image_reaches_float32_above_db(tmp_path):
    """float32_above_db: the iterations after the first whose PSNR (of either image) reaches it run in
    float32, as a float32 tail that starts there would; a run killed after the switch resumes in
    float32 (the switch is read back from the history), bit for bit."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = (w_mse(8),)
    kw = dict(compute_dtype="bfloat16", float32_tail=0.0)
    bf16 = run(G, x, v0, phases, **kw)
    never = run(G, x, v0, phases, float32_above_db=1e3, **kw)
    np.testing.assert_array_equal(never.history["loss"], bf16.history["loss"])
    assert [p.float32_above_db for p in never.phases] == [1e3]
    # the threshold crossed at iteration j: j bf16, j + 1.. float32, as with a float32 tail of 7 - j
    psnr = bf16.history["psnr"].max(axis=1)
    j = 3
    thr = float(psnr[j])
    j = int(np.argmax(psnr >= thr))  # the first iteration at or above it (3 or earlier)
    switched = run(G, x, v0, phases, float32_above_db=thr, **kw)
    tail = run(G, x, v0, phases, compute_dtype="bfloat16", float32_tail=(7 - j) / 8)
    assert [p.float32_steps for p in tail.phases] == [7 - j]
    np.testing.assert_array_equal(switched.history["loss"], tail.history["loss"])
    assert (never.low_dtype_iterations, switched.low_dtype_iterations) == ((8,), (j + 1,))
    assert not np.array_equal(switched.history["loss"], bf16.history["loss"])

    def killer(t, m):
        if t == 6:
            raise Kill()

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Kill):
        run(G, x, v0, phases, float32_above_db=thr, checkpoint_dir=ckpt, checkpoint_every=5, callback=killer, **kw)
    lines = []
    resumed = run(G, x, v0, phases, float32_above_db=thr, checkpoint_dir=ckpt, checkpoint_every=5, log=lines.append,
                  **kw)
    assert "iteration 5/8" in lines[0]
    np.testing.assert_array_equal(resumed.history["loss"], switched.history["loss"])
    assert_trees_equal(resumed.vars, switched.vars)
    assert resumed.low_dtype_iterations == (0,)  # this call's iterations 5-7, after the switch
    with pytest.raises(ValueError, match="float32_above_db"):
        dataclasses.replace(embed.W_l(10), float32_above_db=float("nan"))


def test_bf16_mode_switches_10_db_under_its_rounding_floor_by_default():
    """embed(compute_dtype="bfloat16") sets float32_above_db to AUTO_MARGIN_DB under bf16_floor_db of
    the initial variables: the lowest PSNR, over the batch, between their bf16 and float32 renders,
    rendered as the engine's steps render (modulated activations, not the grouped convolution)."""
    from i2spp_jax.engine import driver

    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    floor = driver.bf16_floor_db(G, v0)
    noise = list(v0["noise"])
    a = G.synthesis(v0["w_plus"], noise=noise, fused_modconv=False)
    b = G.synthesis(v0["w_plus"], noise=noise, dtype="bfloat16", fused_modconv=False)
    mse = np.mean((np.clip(a, -1, 1) - np.clip(b, -1, 1)) ** 2, axis=(1, 2, 3))
    assert floor == pytest.approx(np.min(10 * np.log10(4 / mse)), abs=0.06)  # data range 2, rounded to 0.1
    assert 30 < floor < 70  # bf16's 8 bits of mantissa
    phases = (w_mse(2),)
    auto = run(G, x, v0, phases, compute_dtype="bfloat16")
    assert [p.float32_above_db for p in auto.phases] == [floor - driver.AUTO_MARGIN_DB]
    assert [p.float32_above_db for p in run(G, x, v0, phases, compute_dtype="bfloat16",
                                            float32_above_db=None).phases] == [None]
    assert [p.float32_above_db for p in run(G, x, v0, phases, compute_dtype="float32").phases] == [None]
    with pytest.raises(ValueError, match="float32_above_db"):
        run(G, x, v0, phases, compute_dtype="bfloat16", float32_above_db="high")


def test_vgg_dtype_keeps_vgg_float32_beside_a_bf16_generator():
    """Phase.vgg_dtype="float32": VGG16's features (of the targets, and of G's image in the step) are
    the float32 ones bit for bit, while G still renders in bf16."""
    from i2spp_jax.engine import step as step_lib

    G = tiny_generator()
    vgg = vgg_lib.random_vgg16(jax.random.PRNGKey(0))
    x = targets(G, 2)
    base = embed.W_l(4, percept=1.0, resize_to=32)
    low = dataclasses.replace(base, compute_dtype="bfloat16")
    mixed = dataclasses.replace(low, vgg_dtype="float32")
    feats = {name: step_lib.target_features(vgg, x, x, p) for name, p in
             (("f32", base), ("bf16", low), ("mixed", mixed))}
    assert_trees_equal(feats["mixed"], feats["f32"])
    assert not np.allclose(feats["bf16"]["x"]["conv1_1"], feats["f32"]["x"]["conv1_1"], rtol=1e-5)
    # in the step: the generator's convolutions bf16, VGG's float32
    v0 = embed.initial_variables(G, 1, seed=1)
    v1 = jax.tree.map(lambda a: a[0], v0)
    opt = step_lib.make_optimizer(mixed).init(v1)
    masks = jax.tree.map(lambda a: a[0], embed.make_masks(G, 1))
    f1 = jax.tree.map(lambda a: a[0], feats["mixed"])
    fn = lambda v: step_lib.step(v, opt, G, vgg, x[0], x[0], masks, None, f1, phase=mixed)[2]["loss"]  # noqa: E731
    n_g = sum(conv_dtypes(lambda w: G.synthesis(w), v0["w_plus"]).values())
    dtypes = conv_dtypes(fn, v1)
    assert dtypes["bfloat16/bfloat16->bfloat16"] >= n_g  # G (forward; its backward is not traced by make_jaxpr)
    assert dtypes["float32/float32->float32"] > 0  # VGG
    assert set(dtypes) == {"bfloat16/bfloat16->bfloat16", "float32/float32->float32"}
    with pytest.raises(ValueError, match="vgg_dtype"):
        dataclasses.replace(base, vgg_dtype="float16")


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
    """Phase gained compute_dtype, float32_steps, float32_head_steps and vgg_dtype: at their float32 values a phase's key is the repr
    an earlier version wrote into run.json and checkpoints, so that its runs resume; a bf16 phase's
    key names them. The same for the commands' settings."""
    from experiments import presets
    from experiments.reconstruct import ReconstructConfig

    for p in (embed.W_l(10), embed.Mk_n(5, masks="known", y="previous")):
        assert embed.phase_key(p) == repr(p).replace(
            ", compute_dtype='float32', float32_steps=0, float32_head_steps=0, vgg_dtype=None, float32_above_db=None",
            "")
        assert "compute_dtype" not in embed.phase_key(p)
        low = dataclasses.replace(p, compute_dtype="bfloat16", float32_steps=1)
        assert "compute_dtype='bfloat16', float32_steps=1" in embed.phase_key(low)
    settings = presets.run_settings(ReconstructConfig(), exclude=("out",))
    assert "compute_dtype" not in settings and "float32_tail" not in settings and "w_lr" in settings
    low = presets.run_settings(ReconstructConfig(compute_dtype="bfloat16"), exclude=("out",))
    assert (low["compute_dtype"], low["float32_tail"], low["float32_head"]) == ("bfloat16", 0.1, 0.1)
    head = presets.run_settings(ReconstructConfig(compute_dtype="bfloat16", float32_head=0.1, float32_above_db=36.0),
                                exclude=("out",))
    assert head["float32_head"] == 0.1 and head["float32_above_db"] == 36.0
    # the bf16 mode now switches to float32 near its floor by default: a bf16 run of an earlier version
    # is another run (refused, --fresh), unless started with --float32_above_db=none
    assert low["float32_above_db"] == "auto"
    never = presets.run_settings(ReconstructConfig(compute_dtype="bfloat16", float32_above_db=None), exclude=("out",))
    assert "float32_above_db" not in never
    assert [presets.parse_above_db(t) for t in ("auto", "none", "36", "-1.5")] == ["auto", None, 36.0, -1.5]
    for bad in ("high", "nan", "inf", ""):
        with pytest.raises(ValueError, match="--float32_above_db"):
            presets.parse_above_db(bad)
