"""Tests of the embedding engine (i2spp_jax.embed) on a tiny 16x16 generator."""

import functools
import os

import chex
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from i2spp_jax import embed, generator
from i2spp_jax.engine import step as step_lib

RTOL = 1e-5  # float32, batched vs separate (different XLA batching of the same math)
ATOL = 1e-5
NOISE_ATOL = 2e-4  # noise moves by Adam lr 5 per step, so float32 rounding differences grow by ~lr


@functools.lru_cache(maxsize=None)
def tiny_generator() -> generator.Generator:
    """16x16, narrow channels; noise strengths nonzero so that noise optimisation matters."""
    cfg = generator.GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channels=(16, 16, 8),
                                    mapping_layers=2)
    params = generator.init_params(cfg, jax.random.PRNGKey(0))
    flat = flax.traverse_util.flatten_dict(params)
    for i, path in enumerate(sorted(flat)):
        if path[-1] == "noise_strength":
            flat[path] = jnp.full(flat[path].shape, 0.3)
        elif path[-1] == "weight" and "torgb" in path and "affine" not in path:
            flat[path] = flat[path] * 0.25  # as the demo generator: images in about [-1, 1]
        elif path[-1] == "bias" and "affine" not in path:
            flat[path] = 0.1 * jax.random.normal(jax.random.PRNGKey(i), flat[path].shape)
    params = flax.traverse_util.unflatten_dict(flat)
    G = generator.Generator(params=params, config=cfg)
    z = jax.random.normal(jax.random.PRNGKey(1), (256, cfg.z_dim))
    params["mapping"]["w_avg"] = jnp.mean(G.mapping(z)[:, 0], axis=0)
    return generator.Generator(params=params, config=cfg)


def targets(G, batch, seed=1):
    z = jax.random.normal(jax.random.PRNGKey(seed), (batch, G.z_dim))
    noise = G.make_noise(jax.random.PRNGKey(seed + 100), batch=batch)
    return jnp.clip(G.synthesis(G.mapping(z), noise=noise), -1, 1)


def mse_schedule(name="w_then_noise", w_steps=6, noise_steps=4, **kw):
    return embed.schedule(name, w_steps, noise_steps, percept=0.0, resize_to=None, **kw)


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# --- phases and optimisers ------------------------------------------------------------------


def test_paper_defaults():
    w, n, st = embed.W_l(5000), embed.Mk_n(3000), embed.M_st(1000)
    assert (w.update_w, w.update_noise, w.w_lr, w.w_optimizer) == (True, False, 0.01, "adam")
    assert (w.weights.style, w.weights.mse1, w.weights.mse2, w.weights.percept) == (0.0, 1e-5, 0.0, 1e-5)
    assert (n.update_w, n.update_noise, n.noise_lr) == (False, True, 5.0)
    assert (n.weights.style, n.weights.mse1, n.weights.mse2, n.weights.percept) == (0.0, 1e-5, 1e-5, 0.0)
    assert st.weights.style == 5e-7 and st.update_w and not st.update_noise
    assert embed.W_l(10, lr=0.8, optimizer="sgd").w_optimizer == "sgd"
    assert [p.name for p in embed.schedule("w_then_noise", 5000, 3000)] == ["W_l", "Mk_n"]
    assert [p.name for p in embed.schedule("noise_then_w", 5000, 3000)] == ["Mk_n", "W_l"]
    assert [(p.name, p.num_steps) for p in embed.schedule("joint", 5000, 3000)] == [("joint", 8000)]
    assert [(p.name, p.num_steps) for p in embed.schedule("w_only", 5000, 3000)] == [("W_l", 8000)]
    with pytest.raises(ValueError, match="unknown schedule"):
        embed.schedule("both", 1, 1)


@pytest.mark.parametrize("phase,expected", [
    (embed.W_l(1), "w"), (embed.Mk_n(1), "noise"), (embed.Joint(1), "both")])
def test_every_leaf_labelled(phase, expected):
    G = tiny_generator()
    v = embed.initial_variables(G)
    lab = embed.labels(v, phase)
    assert jax.tree.structure(lab) == jax.tree.structure(jax.tree.map(lambda _: "", v))
    assert lab["w_plus"] == ("frozen" if expected == "noise" else "w")
    assert set(lab["noise"]) == {"frozen" if expected == "w" else "noise"}


def test_optax_masked_alone_does_not_freeze():
    """The trap STYLE.md warns about: optax.masked passes raw gradients of unmasked leaves through."""
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    grads = {"a": jnp.ones(3), "b": jnp.ones(3)}
    tx = optax.masked(optax.adam(0.1), {"a": True, "b": False})
    upd, _ = tx.update(grads, tx.init(params), params)
    assert not np.array_equal(optax.apply_updates(params, upd)["b"], params["b"])  # b moved
    tx = optax.partition({"opt": optax.adam(0.1), "frozen": optax.set_to_zero()}, {"a": "opt", "b": "frozen"})
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, upd)["b"], params["b"])


@pytest.mark.parametrize("phases", [mse_schedule("joint", 5, 3), (embed.Joint(8, w_lr=0.8, noise_lr=5.0,
                                                                            percept=0.0, resize_to=None),)])
def test_masked_entries_bit_identical(phases):
    G = tiny_generator()
    B = 2
    v0 = embed.initial_variables(G, B, w_init="uniform", seed=3)
    # A -0.0 in a frozen entry: `x + 0.0` would flip its sign bit; the engine must select.
    v0["w_plus"] = v0["w_plus"].at[:, 1, 0].set(-0.0)
    w_m = np.array([[1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 1, 0]])
    spatial = np.zeros((16, 16)); spatial[4:10, 2:12] = 1
    n_m = [1, 0, 1, np.stack([spatial, 1 - spatial]), 0]
    masks = embed.make_masks(G, B, w_m=w_m, n_m=n_m)
    r = embed.embed(G, targets(G, B), phases=phases, init_vars=v0, masks=masks, log_every=0)
    w0, w1 = np.asarray(v0["w_plus"]), np.asarray(r.vars["w_plus"])
    frozen = w_m == 0
    np.testing.assert_array_equal(w0[frozen].view(np.uint32), w1[frozen].view(np.uint32))
    assert np.all(np.any(w0[~frozen] != w1[~frozen], axis=-1))  # every free layer moved
    for i, (m0, m1) in enumerate(zip(v0["noise"], r.vars["noise"])):
        keep = np.broadcast_to(np.asarray(masks["vars"]["noise"][i]) == 0, m0.shape)
        np.testing.assert_array_equal(np.asarray(m0)[keep], np.asarray(m1)[keep])
        if (~keep).any():
            assert np.any(np.asarray(m0)[~keep] != np.asarray(m1)[~keep])


def test_phase_freezes_other_group():
    G = tiny_generator()
    v0 = embed.initial_variables(G, 1, seed=0)
    r = embed.embed(G, targets(G, 1), phases=mse_schedule(), init_vars=v0, log_every=0)
    after_w, after_n = r.phase_vars
    assert_trees_equal(after_w["noise"], v0["noise"])  # W_l leaves noise alone
    assert_trees_equal(after_n["w_plus"], after_w["w_plus"])  # Mk_n leaves w alone
    assert not np.array_equal(after_w["w_plus"], v0["w_plus"])
    assert not np.array_equal(after_n["noise"][-1], after_w["noise"][-1])


# --- initialisation and masks ---------------------------------------------------------------


def test_initial_variables():
    G = tiny_generator()
    v = embed.initial_variables(G, 3, w_init="w_avg", noise_init="const")
    assert v["w_plus"].shape == (3, G.num_ws, G.w_dim)
    np.testing.assert_array_equal(v["w_plus"][2, 5], G.w_avg)
    for m, c in zip(v["noise"], G.noise_const):
        np.testing.assert_array_equal(m[1], c)
    u = embed.initial_variables(G, 2, w_init="uniform", seed=7)["w_plus"]
    u4 = embed.initial_variables(G, 2, w_init="uniform_0.4", seed=7)["w_plus"]
    assert -1 <= u.min() < -0.9 and 0.9 < u.max() <= 1 and -0.4 <= u4.min() and u4.max() <= 0.4
    assert not np.array_equal(u[0], u[1])  # each image its own draw
    assert_trees_equal(embed.initial_variables(G, 2, w_init="uniform", seed=7),
                       embed.initial_variables(G, 2, w_init="uniform", seed=7))
    assert not np.array_equal(embed.initial_variables(G, 1, seed=8)["noise"][0],
                              embed.initial_variables(G, 1, seed=7)["noise"][0])
    single = embed.initial_variables(G, w_init=u[1])  # a given embedding
    np.testing.assert_array_equal(single["w_plus"], u[1])
    with pytest.raises(ValueError, match="w_init has shape"):
        embed.initial_variables(G, w_init=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="w_init='mean'"):
        embed.initial_variables(G, w_init="mean")


def test_mask_errors_name_the_cause():
    G = tiny_generator()
    with pytest.raises(ValueError, match="w_m .* shape"):
        embed.make_masks(G, 2, w_m=np.ones(5))
    with pytest.raises(ValueError, match="n_m has 3 entries"):
        embed.make_masks(G, 2, n_m=[1, 1, 1])
    with pytest.raises(ValueError, match=r"n_m\[b8.conv0\]"):
        embed.make_masks(G, 2, n_m=[1, np.ones((4, 4)), 1, 1, 1])
    with pytest.raises(ValueError, match="mask_mse .* 16x16"):
        embed.make_masks(G, 2, mask_mse=np.ones((32, 32)))
    with pytest.raises(ValueError, match="binary"):
        embed.make_masks(G, 1, w_m=np.full(6, 0.5))
    m = embed.make_masks(G, 2, mask_mse=np.ones((16, 16)))
    assert m["loss"]["mse"].shape == (2, 16, 16, 1)


def test_bad_targets_rejected():
    G = tiny_generator()
    v0 = embed.initial_variables(G, 2)
    with pytest.raises(ValueError, match=r"target_x has shape \(2, 32, 32, 3\)"):
        embed.embed(G, np.zeros((2, 32, 32, 3)), phases=mse_schedule(), init_vars=v0)
    bad = np.zeros((2, 16, 16, 3)); bad[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embed.embed(G, bad, phases=mse_schedule(), init_vars=v0)
    with pytest.raises(ValueError, match=r"masks.*\['vars'\].* has shape \(3, .*leading batch axis of 2"):
        embed.embed(G, np.zeros((2, 16, 16, 3)), phases=mse_schedule(), init_vars=v0, masks=embed.make_masks(G, 3))
    with pytest.raises(ValueError, match=r"init_vars\['w_plus'\] has shape \(6, 16\)"):
        embed.embed(G, np.zeros((1, 16, 16, 3)), phases=mse_schedule(), init_vars=embed.initial_variables(G))
    with pytest.raises(ValueError, match="no vgg"):
        embed.embed(G, np.zeros((2, 16, 16, 3)), phases=embed.schedule("w_only", 1, 1), init_vars=v0)


# --- compiled step: tracing, batching -------------------------------------------------------


def test_no_retracing(monkeypatch):
    chex.clear_trace_counter()
    step_lib._compiled_step_for.cache_clear()
    monkeypatch.setattr(step_lib, "step", chex.assert_max_traces(step_lib.step, n=1))
    G = tiny_generator()
    r = embed.embed(G, targets(G, 2), phases=(embed.W_l(12, percept=0.0, resize_to=None),),
                    init_vars=embed.initial_variables(G, 2), log_every=4)
    assert np.all(np.isfinite(r.history["loss"]))
    step_lib._compiled_step_for.cache_clear()  # drop the program built around the wrapper


def test_step_compiles_once_across_embed_calls(monkeypatch):
    """Chained applications and photo after photo: one trace per (phase settings, shapes) per process."""
    step_lib._compiled_step_for.cache_clear()
    traces = []
    original = step_lib.step

    def counting_step(*args, **kw):
        traces.append(kw["phase"].name)
        return original(*args, **kw)

    monkeypatch.setattr(step_lib, "step", counting_step)
    G = tiny_generator()
    for seed, steps in ((1, 5), (2, 7), (3, 3)):  # other targets, other lengths: the same program
        r = embed.embed(G, targets(G, 2, seed=seed), phases=mse_schedule(w_steps=steps, noise_steps=steps),
                        init_vars=embed.initial_variables(G, 2, seed=seed), log_every=0)
        assert np.all(np.isfinite(r.history["loss"]))
    assert len(traces) == 2, traces  # W_l once and Mk_n once, for all three calls
    embed.embed(G, targets(G, 3), phases=mse_schedule(w_steps=2, noise_steps=2),
                init_vars=embed.initial_variables(G, 3), log_every=0)
    assert len(traces) == 4  # a new batch size is a new shape: compiled once more per phase
    step_lib._compiled_step_for.cache_clear()  # drop the programs built around the counting wrapper


def test_batch_equals_separate_runs():
    G = tiny_generator()
    B = 3
    x = targets(G, B)
    v0 = embed.initial_variables(G, B, w_init="uniform_0.4", seed=5)
    w_m = np.ones((B, G.num_ws)); w_m[1, :2] = 0
    mask = np.ones((B, 16, 16, 1)); mask[2, :8] = 0
    phases = mse_schedule(w_steps=5, noise_steps=3, noise_lr=0.05)  # lr 5 would amplify rounding
    batch = embed.embed(G, x, phases=phases, init_vars=v0, masks=embed.make_masks(G, B, w_m=w_m, mask_mse=mask),
                        log_every=0)
    for i in range(B):
        vi = jax.tree.map(lambda a: a[i:i + 1], v0)
        mi = embed.make_masks(G, 1, w_m=w_m[i:i + 1], mask_mse=mask[i:i + 1])
        one = embed.embed(G, x[i:i + 1], phases=phases, init_vars=vi, masks=mi, log_every=0)
        np.testing.assert_allclose(batch.vars["w_plus"][i], one.vars["w_plus"][0], rtol=RTOL, atol=ATOL)
        for a, b in zip(batch.vars["noise"], one.vars["noise"]):
            np.testing.assert_allclose(a[i], b[0], rtol=RTOL, atol=NOISE_ATOL)
        np.testing.assert_allclose(batch.history["loss"][:, i], one.history["loss"][:, 0], rtol=RTOL)


def test_optimisation_improves_psnr_and_logs(caplog):
    G = tiny_generator()
    lines = []
    r = embed.embed(G, targets(G, 2), phases=mse_schedule(w_steps=30, noise_steps=20, w_lr=0.05, noise_lr=0.2),
                    init_vars=embed.initial_variables(G, 2), log_every=10, log=lines.append)
    h = r.history
    assert h["psnr"].shape == (50, 2) and h["phase"].tolist() == [0] * 30 + [1] * 20
    assert np.all(h["psnr"][29] > h["psnr"][0] + 1)  # W+ helps
    assert np.all(h["psnr"][-1] > h["psnr"][29] + 1)  # then noise helps
    assert len(lines) == 5
    assert "[W_l 1/2] it 10/30" in lines[0] and "mse1" in lines[0] and "PSNR" in lines[0] and "it/s" in lines[0]
    assert "[Mk_n 2/2] it 20/20 (total 50/50)" in lines[-1] and "mse2" in lines[-1]
    _, psnr = embed.evaluate(r.vars, G, targets(G, 2))
    assert np.all(psnr > h["psnr"][0])


# --- checkpoints, resume, NaN ---------------------------------------------------------------


class Kill(Exception):
    pass


@pytest.mark.parametrize("kill_at", [7, 10, 13])  # mid W_l; exactly at the phase end; mid Mk_n
def test_resume_bit_identical(tmp_path, kill_at):
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = mse_schedule(w_steps=10, noise_steps=6)
    full = embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, seed=1)

    def killer(t, m):
        if t == kill_at:
            raise Kill()

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Kill):
        embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, seed=1, checkpoint_dir=ckpt,
                    checkpoint_every=3, callback=killer)
    lines = []
    resumed = embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, seed=1, checkpoint_dir=ckpt,
                          checkpoint_every=3, log=lines.append)
    assert "resumed" in lines[0] and f"iteration {kill_at if kill_at == 10 else kill_at // 3 * 3}" in lines[0]
    assert_trees_equal(resumed.vars, full.vars)
    assert_trees_equal(resumed.phase_vars, full.phase_vars)
    for k in embed.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[k], full.history[k])
    # a checkpoint of another run is refused, not silently mixed in
    with pytest.raises(ValueError, match="different run"):
        embed.embed(G, x, phases=phases, init_vars=v0, seed=2, checkpoint_dir=ckpt, checkpoint_every=3)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, seed=0)
    phases = (embed.W_l(4, percept=0.0, resize_to=None), embed.Mk_n(5, lr=float("inf"), resize_to=None))
    ckpt = str(tmp_path / "ckpt")
    ended = []
    with pytest.raises(embed.NonFiniteLossError, match=r"NaN/inf at iteration 5 \(phase Mk_n.*iteration 4\)") as e:
        embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, checkpoint_dir=ckpt, checkpoint_every=2,
                    on_phase_end=lambda i, v: ended.append(i))
    assert ended == [0]  # the W+ phase's result was handed out before the failure
    assert len(e.value.phase_vars) == 1 and e.value.history["loss"].shape == (4, 2)
    assert np.all(np.isfinite(e.value.history["loss"]))
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.latest_step() == 4


def test_style_transfer_block_with_vgg():
    """M_st: Gram loss under M_s against y, content outside it against x (random-weight VGG)."""
    from i2spp_jax import vgg as V

    G = tiny_generator()
    vgg = V.random_vgg16(jax.random.PRNGKey(0))
    x, y = targets(G, 1, seed=1), targets(G, 1, seed=2)
    region = np.zeros((16, 16, 1)); region[4:12, 4:12] = 1
    masks = embed.make_masks(G, 1, mask_style=region, mask_mse=1 - region)
    v0 = embed.initial_variables(G, 1, seed=0)
    lines = []
    r = embed.embed(G, x, target_y=y, phases=(embed.M_st(3, resize_to=None),), init_vars=v0, masks=masks, vgg=vgg,
                    log_every=3, log=lines.append)
    assert np.all(r.history["style"] > 0) and np.all(np.isfinite(r.history["loss"]))
    assert "style" in lines[0] and "mse1" in lines[0]
    assert_trees_equal(r.vars["noise"], v0["noise"])
    assert not np.array_equal(r.vars["w_plus"], v0["w_plus"])
