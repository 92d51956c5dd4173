"""Tests of the embedding engine (i2spp_jax.embed) on a tiny 16x16 generator."""

import dataclasses
import functools
import json
import os
import re

import chex
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from i2spp_jax import activations, embed, generator, losses
from i2spp_jax import vgg as vgg_lib
from i2spp_jax.engine import checkpoints, driver
from i2spp_jax.engine import step as step_lib

RTOL = 1e-5  # float32, batched vs separate (XLA sums in a batch-size-dependent order; see the batch test)
W_ATOL = 5e-4  # W+ after 5 Adam steps, batched vs separate (measured 1.9e-4; see test_batch_equals_separate_runs)
NOISE_ATOL = 1e-1  # noise after 3 Adam steps at lr 5 (measured 2.9e-2 on values of size ~10; same test)
MK_N_RTOL = 5e-4  # Mk_n's history, batched vs separate (measured 1.04e-4; same test)


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


def w_mse(num_steps, **kw):
    """W_l with the MSE term only, at a rate that moves the 16x16 generator within a few steps."""
    return embed.W_l(num_steps, lr=0.05, percept=0.0, resize_to=None, **kw)


def n_mse(num_steps, **kw):
    """Mk_n at lr 0.5: the paper's lr 5 overshoots on this generator (noise strength 0.3, 16x16), the
    fit of the counted half getting worse rather than better within 10 steps."""
    return embed.Mk_n(num_steps, lr=0.5, resize_to=None, **kw)


def square(lo=4, hi=12):
    """[16, 16, 1]: 1 on rows and columns [lo, hi), 0 elsewhere."""
    m = np.zeros((16, 16, 1), np.float32)
    m[lo:hi, lo:hi] = 1
    return m


LEFT = np.zeros((16, 16, 1), np.float32)
LEFT[:, :8] = 1  # the left half of a 16x16 image


def region_psnr(a, b, region):
    """PSNR in dB of [H, W, C] images (clipped to [-1, 1]) over the pixels where region [H, W, 1] is 1."""
    sel = np.broadcast_to(np.asarray(region) > 0, np.shape(a))
    d = np.clip(np.asarray(a), -1, 1)[sel] - np.clip(np.asarray(b), -1, 1)[sel]
    return float(10 * np.log10(4.0 / np.mean(np.square(d))))


def assert_trees_equal(a, b):
    """Bit-identical pytrees (uint32 views, so that -0.0 and +0.0 differ)."""
    def eq(x, y):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x.view(np.uint32) if x.dtype == np.float32 else x,
                                      y.view(np.uint32) if y.dtype == np.float32 else y)
    jax.tree.map(eq, a, b)


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


@pytest.mark.parametrize("phases", [
    mse_schedule("joint", 5, 3),  # Adam on both groups at once
    mse_schedule("w_then_noise", 5, 3, w_lr=0.8, w_optimizer="sgd"),  # W_l with SGD (paper: lr 0.8), then Mk_n
], ids=["joint_adam", "w_sgd_then_noise_adam"])  # fmt: skip
def test_masked_entries_bit_identical(phases):
    """Entries masked out by w_m / n_m keep their exact bits under Adam and under SGD, and so do whole
    leaves a phase does not optimise (label "frozen": noise under the SGD W_l, w under Mk_n's Adam;
    W_l with Adam leaving noise alone is test_phase_freezes_other_group); everything else moves."""
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
    if phases[0].name == "W_l":
        assert phases[0].w_optimizer == "sgd" and phases[1].noise_lr == 5.0  # SGD, then Adam
        after_w, after_n = r.phase_vars
        assert_trees_equal(after_w["noise"], v0["noise"])  # frozen leaf under W_l's optimiser
        assert_trees_equal(after_n["w_plus"], after_w["w_plus"])  # frozen leaf under Mk_n's Adam
    w0, w1 = np.asarray(v0["w_plus"]), np.asarray(r.vars["w_plus"])
    frozen = w_m == 0
    np.testing.assert_array_equal(w0[frozen].view(np.uint32), w1[frozen].view(np.uint32))
    assert np.all(np.any(w0[~frozen] != w1[~frozen], axis=-1))  # every free layer moved
    for i, (m0, m1) in enumerate(zip(v0["noise"], r.vars["noise"])):
        keep = np.broadcast_to(np.asarray(masks["vars"]["noise"][i]) == 0, m0.shape)
        np.testing.assert_array_equal(np.asarray(m0)[keep].view(np.uint32), np.asarray(m1)[keep].view(np.uint32))
        if (~keep).any():
            assert np.all(np.asarray(m0)[~keep] != np.asarray(m1)[~keep])


def test_sgd_phase_takes_plain_gradient_steps():
    """W_l(optimizer="sgd") really runs SGD: one step is w − lr · ∇L (masked by w_m), not Adam's
    sign-like step of size lr in every entry."""
    G = tiny_generator()
    B = 2
    x = targets(G, B)
    v0 = embed.initial_variables(G, B, w_init="uniform", seed=3)
    w_m = np.array([[1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 1, 0]])
    masks = embed.make_masks(G, B, w_m=w_m, n_m=[1, 0, 1, 1, 0])
    phase = mse_schedule("w_only", 1, 0, w_lr=0.8, w_optimizer="sgd")[0]
    r = embed.embed(G, x, phases=(phase,), init_vars=v0, masks=masks, log_every=0)

    def loss(w, i):
        v = {"w_plus": w, "noise": [m[i] for m in v0["noise"]]}
        return losses.eq1_loss(None, step_lib.render(G, v), x[i:i + 1], x[i:i + 1], weights=phase.weights,
                               resize_to=None)[0][0]

    grads = np.stack([jax.grad(loss)(v0["w_plus"][i], i) for i in range(B)])
    expected = -0.8 * grads * w_m[..., None]
    moved = np.asarray(r.vars["w_plus"] - v0["w_plus"])
    # Another program (unbatched grad) rounds differently: 2.7e-8 at most, on steps of up to 1.1e-3.
    np.testing.assert_allclose(moved, expected, rtol=1e-4, atol=1e-7)
    assert np.abs(moved).max() < 0.01 * 0.8  # Adam's first step would move every free entry by ≈ lr


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


def test_w_init_per_image_list():
    """One w_init entry per image (a name or an array) equals the same inits built separately."""
    G = tiny_generator()
    given = np.asarray(embed.initial_variables(G, w_init="uniform_0.4", seed=11)["w_plus"])
    v = embed.initial_variables(G, 3, w_init=["w_avg", given, "uniform"], seed=7)
    np.testing.assert_array_equal(v["w_plus"][0], embed.initial_variables(G, w_init="w_avg")["w_plus"])
    np.testing.assert_array_equal(v["w_plus"][1], given)
    # image i draws from fold_in(PRNGKey(seed), i) whatever the other entries are
    np.testing.assert_array_equal(v["w_plus"][2], embed.initial_variables(G, 3, w_init="uniform", seed=7)["w_plus"][2])
    assert_trees_equal(v["noise"], embed.initial_variables(G, 3, seed=7)["noise"])  # noise does not depend on w_init
    arrays = [given, 0.5 * given]
    assert_trees_equal(embed.initial_variables(G, 2, w_init=arrays),
                       embed.initial_variables(G, 2, w_init=np.stack(arrays)))
    with pytest.raises(ValueError, match=r"w_init\[1\] has shape \(3, 3\)"):
        embed.initial_variables(G, 2, w_init=["w_avg", np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"w_init\[1\]='mean'"):
        embed.initial_variables(G, 2, w_init=["w_avg", "mean"])


def test_make_masks_style_mask_on_y():
    G = tiny_generator()
    m = embed.make_masks(G, 1, mask_style=square(), mask_style_y=np.ones((16, 16)))
    assert sorted(m["loss"]) == ["style", "style_y"] and m["loss"]["style_y"].shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(m["loss"]["style_y"], 1.0)
    assert "style_y" not in embed.make_masks(G, 2, mask_style=square())["loss"]  # None = M_s (losses.eq1_loss)
    with pytest.raises(ValueError, match="mask_style_y .* 16x16"):
        embed.make_masks(G, 1, mask_style_y=np.ones((8, 8)))
    with pytest.raises(ValueError, match=r"mask_style_y must lie in \[0, 1\]"):
        embed.make_masks(G, 1, mask_style_y=np.full((16, 16), 2.0))


# --- phases' data: mask sets, y, broadcasting, edits -----------------------------------------


def test_each_phase_uses_its_own_mask_set():
    """Pixels outside a phase's loss mask pull nothing: under masks="hole" the result is the same bit
    for bit whatever the target holds in the hole; under masks="all" in the next phase it is not,
    and that phase pulls the hole toward the target. One mask tree (not a dict) serves every phase."""
    G = tiny_generator()
    v0 = embed.initial_variables(G, 1, seed=0)
    hole = square()
    x_a = targets(G, 1, seed=1)
    x_b = x_a.at[:, 4:12, 4:12].set(-x_a[:, 4:12, 4:12])  # x_a with another hole
    masks = {"hole": embed.make_masks(G, 1, mask_mse=1 - hole), "all": embed.make_masks(G, 1, mask_mse=1 + 0 * hole)}
    phases = (w_mse(10, masks="hole"), w_mse(10, masks="all"))
    a = embed.embed(G, x_a, phases=phases, init_vars=v0, masks=masks, log_every=0)
    b = embed.embed(G, x_b, phases=phases, init_vars=v0, masks=masks, log_every=0)
    assert_trees_equal(a.phase_vars[0], b.phase_vars[0])  # the hole pulled nothing in phase 0
    np.testing.assert_array_equal(a.history["mse1"][:10], b.history["mse1"][:10])
    assert not np.array_equal(a.vars["w_plus"], b.vars["w_plus"])  # ... and did in phase 1
    hole_psnr = lambda v: region_psnr(embed.evaluate(v, G, x_a)[0][0], x_a[0], hole)  # noqa: E731
    start, after_hole, after_all = hole_psnr(v0), hole_psnr(a.phase_vars[0]), hole_psnr(a.phase_vars[1])
    assert after_all > after_hole + 1.0, (start, after_hole, after_all)  # counted: pulled toward x_a
    # a single mask tree applies to every phase, whatever the phases call their set
    one = [embed.embed(G, x, phases=phases, init_vars=v0, masks=masks["hole"], log_every=0) for x in (x_a, x_b)]
    assert_trees_equal(one[0].vars, one[1].vars)
    assert_trees_equal(one[0].phase_vars[0], a.phase_vars[0])
    with pytest.raises(ValueError, match=r"mask sets \['all'\] but masks has only \['hole'\]"):
        embed.embed(G, x_a, phases=phases, init_vars=v0, masks={"hole": masks["hole"]}, log_every=0)


def test_phase_y_previous_is_the_render_of_the_phase_start():
    """Mk_n with y="previous" and M_m on the left half: the right half is held to the render of the
    W+ result (the previous phase's), not to target_y (set far from it); with y="y" it goes to
    target_y. And "previous" is exactly a run whose target_y is that render."""
    G = tiny_generator()
    v0 = embed.initial_variables(G, 1, seed=0)
    x = targets(G, 1)
    far = -x  # target_y: nothing like the render
    right = 1 - LEFT
    masks = {"all": embed.make_masks(G, 1, mask_mse=np.ones((16, 16))), "half": embed.make_masks(G, 1, mask_mse=LEFT)}

    def run(y):
        return embed.embed(G, x, target_y=far, phases=(w_mse(10, masks="all"), n_mse(10, masks="half", y=y)),
                           init_vars=v0, masks=masks, log_every=0)

    prev_run, y_run = run("previous"), run("y")
    assert_trees_equal(prev_run.phase_vars[0], y_run.phase_vars[0])  # the same W+ phase
    prev = embed.evaluate(prev_run.phase_vars[0], G, x)[0]
    final_prev, final_y = (embed.evaluate(r.vars, G, x)[0][0] for r in (prev_run, y_run))
    # Measured: y="previous" keeps the right half at 33 dB of the W+ render (6.7 dB of target_y);
    # y="y" pulls it to 11.7 dB of target_y (12.7 dB of the W+ render).
    assert region_psnr(final_prev, prev[0], right) > 28
    assert region_psnr(final_prev, prev[0], right) > region_psnr(final_y, prev[0], right) + 10
    assert region_psnr(final_y, far[0], right) > region_psnr(final_prev, far[0], right) + 3
    assert region_psnr(final_prev, x[0], LEFT) > region_psnr(prev[0], x[0], LEFT) + 3  # the left half fits x
    again = embed.embed(G, x, target_y=prev, phases=(n_mse(10, masks="half"),), init_vars=prev_run.phase_vars[0],
                        masks=masks, log_every=0)
    assert_trees_equal(again.vars, prev_run.vars)


def test_phase_y_x_ignores_target_y():
    G = tiny_generator()
    v0 = embed.initial_variables(G, 1, seed=0)
    x = targets(G, 1)
    masks = embed.make_masks(G, 1, mask_mse=LEFT)
    r = embed.embed(G, x, target_y=-x, phases=(n_mse(4, y="x"),), init_vars=v0, masks=masks, log_every=0)
    same = embed.embed(G, x, target_y=x, phases=(n_mse(4),), init_vars=v0, masks=masks, log_every=0)
    other = embed.embed(G, x, target_y=-x, phases=(n_mse(4),), init_vars=v0, masks=masks, log_every=0)
    assert_trees_equal(r.vars, same.vars)
    assert not np.array_equal(r.vars["noise"][-1], other.vars["noise"][-1])
    with pytest.raises(ValueError, match="y must be one of"):
        embed.Mk_n(1, y="prev")


def test_single_target_and_masks_broadcast_to_the_batch():
    """A target [H, W, C] or [1, H, W, C], target_y likewise, and masks from make_masks(G, 1, ...)
    give bit-identical results to the same data tiled to the batch."""
    G = tiny_generator()
    B = 2
    v0 = embed.initial_variables(G, B, w_init="uniform_0.4", seed=4)
    x, y = targets(G, 1, seed=1), targets(G, 1, seed=2)
    w_m, n_m = np.array([1, 1, 0, 1, 1, 1]), [1, 1, 0, 1, 1]
    phases = (w_mse(4), n_mse(3))
    tiled = embed.embed(G, jnp.tile(x, (B, 1, 1, 1)), target_y=jnp.tile(y, (B, 1, 1, 1)), phases=phases,
                        init_vars=v0, masks=embed.make_masks(G, B, w_m=np.tile(w_m, (B, 1)), n_m=n_m,
                                                             mask_mse=np.tile(LEFT, (B, 1, 1, 1))), log_every=0)
    single_masks = embed.make_masks(G, 1, w_m=w_m, n_m=n_m, mask_mse=LEFT)
    for xs, ys in ((x[0], y[0]), (x, y)):
        single = embed.embed(G, xs, target_y=ys, phases=phases, init_vars=v0, masks=single_masks, log_every=0)
        assert_trees_equal(single.phase_vars, tiled.phase_vars)
        for k in embed.HISTORY_KEYS:
            np.testing.assert_array_equal(single.history[k], tiled.history[k])
    assert not np.array_equal(tiled.vars["w_plus"][0], tiled.vars["w_plus"][1])  # each image its own start
    with pytest.raises(ValueError, match=r"target_y has shape \(3, 16, 16, 3\)"):
        embed.embed(G, x, target_y=jnp.tile(y, (3, 1, 1, 1)), phases=phases, init_vars=v0, log_every=0)


def _edit_to(G, seed, mask):
    """A spatial copy at the last block's output (features and skip image) from image `seed`'s
    tensors, one image's worth (leading axis 1); and that image [1, H, W, C]."""
    z = jax.random.normal(jax.random.PRNGKey(seed), (1, G.z_dim))
    img_b, acts_b = G.synthesis(G.mapping(z), noise=G.make_noise(jax.random.PRNGKey(seed), batch=1),
                                return_activations=True)
    point = f"b{G.img_resolution}.img"
    return {point: activations.spatial_copy(np.asarray(mask, np.float32)[None, ..., 0],
                                            activations.capture(acts_b, point))}, img_b


def test_edits_apply_in_every_render_and_the_optimisation_runs_through_them():
    """M = 0 at the last block's output makes every render B's image whatever w is: the loss has no
    gradient in w, and Adam leaves w bit-identical. M = the left half: the right half stays B's
    exactly while the left half, rendered from w, is pulled to the target through the edit."""
    G = tiny_generator()
    B = 2
    x = targets(G, B)
    v0 = embed.initial_variables(G, B, w_init="uniform_0.4", seed=2)
    tile = lambda e: jax.tree.map(lambda a: jnp.tile(a, (B,) + (1,) * (a.ndim - 1)), e)  # noqa: E731

    edits, img_b = _edit_to(G, 7, np.zeros((16, 16, 1)))
    r = embed.embed(G, x, phases=(w_mse(3),), init_vars=v0, edits=edits, log_every=0)
    assert_trees_equal(r.vars, v0)
    rendered, psnr = embed.evaluate(r.vars, G, x, edits=tile(edits))
    np.testing.assert_allclose(rendered, jnp.tile(img_b, (B, 1, 1, 1)), atol=1e-6)
    np.testing.assert_allclose(r.history["psnr"], np.broadcast_to(psnr, (3, B)), rtol=1e-6)

    edits, img_b = _edit_to(G, 7, LEFT)
    r = embed.embed(G, x, phases=(w_mse(10),), init_vars=v0, edits=edits, log_every=0)
    start, _ = embed.evaluate(v0, G, x, edits=tile(edits))
    final, _ = embed.evaluate(r.vars, G, x, edits=tile(edits))
    np.testing.assert_allclose(final[:, :, 8:], jnp.tile(img_b[:, :, 8:], (B, 1, 1, 1)), atol=1e-6)
    for i in range(B):
        assert region_psnr(final[i], x[i], LEFT) > region_psnr(start[i], x[i], LEFT) + 1
    # an edit with leading axis 1 broadcasts: bit-identical to the tiled edit
    assert_trees_equal(embed.embed(G, x, phases=(w_mse(10),), init_vars=v0, edits=tile(edits), log_every=0).vars,
                       r.vars)


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path):
    """The fingerprint covers the targets, masks, edits and initial variables: a checkpoint directory
    written by a run on other data is refused, even when phases, shapes and seed agree."""
    G = tiny_generator()
    B = 2
    x = targets(G, B)
    v0 = embed.initial_variables(G, B, seed=2)
    masks = embed.make_masks(G, 1, w_m=np.array([1, 1, 1, 1, 0, 0]))
    edits, _ = _edit_to(G, 7, LEFT)
    run = dict(target_x=x, target_y=x, init_vars=v0, masks=masks, edits=edits)
    ckpt = str(tmp_path / "ckpt")
    phases = (w_mse(3),)
    full = embed.embed(G, **run, phases=phases, checkpoint_dir=ckpt, log_every=0)
    lines = []
    again = embed.embed(G, **run, phases=phases, checkpoint_dir=ckpt, log_every=0, log=lines.append)
    assert "resumed" in lines[0]  # the same data: accepted
    assert_trees_equal(again.vars, full.vars)
    one_pixel = x.at[1, 5, 5, 0].add(1e-3)
    w_moved = dict(v0, w_plus=v0["w_plus"].at[0, 0, 0].add(1e-3))
    other_edits, _ = _edit_to(G, 8, LEFT)
    for change in (dict(target_x=one_pixel), dict(target_y=one_pixel), dict(init_vars=w_moved),
                   dict(masks=embed.make_masks(G, 1, w_m=np.array([1, 1, 1, 1, 1, 0]))),
                   dict(edits=other_edits), dict(edits=_edit_to(G, 7, 1 - LEFT)[0])):
        with pytest.raises(ValueError, match="belongs to a different run"):
            embed.embed(G, **dict(run, **change), phases=phases, checkpoint_dir=ckpt, log_every=0)
    a = {"t": np.zeros(3, np.float32)}
    b = {"t": np.array([0, np.nextafter(np.float32(0), np.float32(1)), 0], np.float32)}
    assert driver.data_hash(a) == embed.data_hash({"t": np.zeros(3)}) != embed.data_hash(b)


def test_resume_refuses_a_checkpoint_of_another_generators_weights(tmp_path, monkeypatch):
    """Library audit: the fingerprint held the generator's shapes only, so a checkpoint folder written
    with one generator resumed silently under another of the same shapes (a finished run returned the
    old result). It now holds G.digest(); a checkpoint written before that is adopted when all else agrees."""
    G = tiny_generator()
    other = G.replace(params=jax.tree_util.tree_map(lambda a: a * 1.01, G.params))
    x = targets(G, 1)
    run = dict(init_vars=embed.initial_variables(G, 1, seed=2), phases=(w_mse(2),), log_every=0)
    assert G.digest() == G.digest() != other.digest()
    ckpt = str(tmp_path / "ckpt")
    embed.embed(G, x, **run, checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="belongs to a different run .* generator or weights"):
        embed.embed(other, x, **run, checkpoint_dir=ckpt)
    # a checkpoint of an earlier version: its fingerprint without the digest
    new_fingerprint = driver._fingerprint
    old_ckpt = str(tmp_path / "old")
    monkeypatch.setattr(driver, "_fingerprint", lambda *a: json.dumps(
        {k: v for k, v in json.loads(new_fingerprint(*a)).items() if k != "generator_digest"}))
    first = embed.embed(G, x, **run, checkpoint_dir=old_ckpt)
    monkeypatch.setattr(driver, "_fingerprint", new_fingerprint)
    lines = []
    again = embed.embed(G, x, **dict(run, log=lines.append), checkpoint_dir=old_ckpt)
    assert "resumed" in lines[0]
    assert_trees_equal(again.vars, first.vars)


def test_the_generator_digest_is_hashed_once_for_immutable_params(monkeypatch):
    """G.digest() reads 120 MB back for a 1024x1024 generator: cached for jax.Array params (immutable),
    never for numpy ones (a user could change them in place)."""
    from i2spp_jax import face

    G = tiny_generator()
    G_jax = G.replace(params=jax.tree_util.tree_map(jnp.asarray, G.params))
    G_np = G.replace(params=jax.tree_util.tree_map(np.array, G.params))
    monkeypatch.setattr(face, "_DIGESTS", {})  # another test may have hashed these very arrays
    hashed = []
    real = face.hashlib.sha256
    monkeypatch.setattr(face.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    assert G_jax.digest() == G_jax.digest() == G_np.digest() == G_np.digest()
    assert len(hashed) == 3  # G_jax once, G_np twice
    G_np.params["mapping"]["w_avg"][0] += 1.0
    assert G_np.digest() != G_jax.digest()


@pytest.mark.parametrize("make, words", [
    (lambda: embed.W_l(3, lr=-1), "w_lr must be a finite rate >= 0, got -1"),
    (lambda: embed.Mk_n(3, lr=float("nan")), "noise_lr must be a finite rate >= 0, got nan"),
    (lambda: embed.Mk_n(3, mse2=-1e-5), "λ mse2 must be a finite weight >= 0, got -1e-05"),
    (lambda: embed.W_l(3, percept=float("inf")), "λ percept must be a finite weight >= 0, got inf"),
])
def test_a_phase_refuses_a_negative_rate_or_weight(make, words):
    """Library audit: a negative learning rate or λ was accepted (the loss was then maximised)."""
    with pytest.raises(ValueError, match=re.escape(words)):
        make()
    assert embed.W_l(3, lr=np.float32(0.1)).w_lr == np.float32(0.1)  # numpy scalars are rates too


def test_embed_names_a_vgg_that_is_not_one():
    """Library audit: vgg="..." ended in a JAX TypeError about abstract arrays."""
    G = tiny_generator()
    with pytest.raises(TypeError, match="vgg is a str; give an i2spp_jax.VGG16"):
        embed.embed(G, targets(G, 1), phases=(w_mse(1),), init_vars=embed.initial_variables(G, 1), vgg="vgg16")


def test_only_a_checkpointing_run_hashes_its_data(tmp_path, monkeypatch):
    """The run fingerprint reads every target, mask and variable back to the host (issue 9: at 8 images
    of 1024x1024 on a GPU, a fifth of a 50-iteration call): embed() computes it only when it has a
    checkpoint folder to compare it with."""
    G = tiny_generator()
    x = targets(G, 1)
    v0 = embed.initial_variables(G, 1, seed=2)
    calls = []
    real = driver.data_hash
    monkeypatch.setattr(driver, "data_hash", lambda *trees: calls.append(len(trees)) or real(*trees))
    embed.embed(G, x, phases=(w_mse(2),), init_vars=v0, log_every=0)
    assert calls == []
    embed.embed(G, x, phases=(w_mse(2),), init_vars=v0, log_every=0, checkpoint_dir=str(tmp_path / "ckpt"))
    assert calls == [5]


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
    """The full W_l loss (MSE + perceptual through a random-weight VGG) then Mk_n, at the paper's
    rates, with per-image masks: a batch of 3 is 3 separate runs, and no image sees another.

    Why not bit-identical: XLA's CPU backend runs a batch's convolutions with other blockings than
    one image's, so the vmapped B = 3 and B = 1 renders differ by a few ulps. One W_l step agrees
    to float32 rounding (measured: 3.0e-8 on w, with the engine's modulated-activation
    convolutions). Adam then amplifies it in two places: where an entry's gradient changes sign,
    m̂/√v̂ loses digits; and where |g| is within a few ε = 1e-8, the step lr·g/(|g| + ε) moves by
    lr·ε·δg/(|g| + ε)², with δg the absolute rounding of a gradient that sums larger terms. Measured
    (2-core CPU, jax 0.10.2): after 5 W_l steps 1.9e-4 on w; after 3 Mk_n steps at lr 5, 2.9e-2 on
    noise values of size ~10; the history agrees to 5.8e-6 relative in W_l and 1.04e-4 in Mk_n.
    (Before issue 9 the engine rendered with grouped convolutions and these were 1.5e-5, 2.2e-3,
    1e-5 and 1.1e-5: the amplification depends on which ulps differ, not on a defect.) The images
    of one batch are independent bit for bit.
    """
    G = tiny_generator()
    vgg = vgg_lib.random_vgg16(jax.random.PRNGKey(0))
    B = 3
    x = targets(G, B)
    v0 = embed.initial_variables(G, B, w_init="uniform_0.4", seed=5)
    w_m = np.ones((B, G.num_ws)); w_m[1, :2] = 0
    mask = np.ones((B, 16, 16, 1)); mask[2, :8] = 0
    masks = embed.make_masks(G, B, w_m=w_m, mask_mse=mask, mask_percept=mask)

    def run(phases, target, vars, i=None):
        m = masks if i is None else embed.make_masks(G, 1, w_m=w_m[i:i + 1], mask_mse=mask[i:i + 1],
                                                     mask_percept=mask[i:i + 1])
        if i is not None:
            target, vars = target[i:i + 1], jax.tree.map(lambda a: a[i:i + 1], vars)
        return embed.embed(G, target, phases=phases, init_vars=vars, masks=m, vgg=vgg, log_every=0)

    w_phase, n_phase = embed.W_l(5, resize_to=32), embed.Mk_n(3, resize_to=32)  # paper's λ and rates
    assert w_phase.weights.percept == 1e-5 and (w_phase.w_lr, n_phase.noise_lr) == (0.01, 5.0)
    # one W_l step: float32 rounding only
    batch = run((embed.W_l(1, resize_to=32),), x, v0)
    for i in range(B):
        one = run((embed.W_l(1, resize_to=32),), x, v0, i)
        np.testing.assert_allclose(batch.vars["w_plus"][i], one.vars["w_plus"][0], rtol=RTOL, atol=1e-6)
    # the whole schedule
    batch = run((w_phase, n_phase), x, v0)
    assert np.all(batch.history["percept"][:5] > 0)
    for i in range(B):
        one = run((w_phase, n_phase), x, v0, i)
        for k in embed.HISTORY_KEYS:  # Mk_n's lr-5 steps amplify rounding (measured 1.04e-4 relative)
            np.testing.assert_allclose(batch.history[k][:5, i], one.history[k][:5, 0], rtol=RTOL, atol=1e-6,
                                       err_msg=k)
            np.testing.assert_allclose(batch.history[k][5:, i], one.history[k][5:, 0], rtol=MK_N_RTOL, err_msg=k)
        np.testing.assert_allclose(batch.phase_vars[0]["w_plus"][i], one.phase_vars[0]["w_plus"][0], atol=W_ATOL)
        for a, b in zip(batch.vars["noise"], one.vars["noise"]):
            np.testing.assert_allclose(a[i], b[0], atol=NOISE_ATOL)
    # no cross-talk, exactly: another image 0 leaves images 1 and 2 bit-identical
    other = run((w_phase, n_phase), x.at[0].set(targets(G, 1, seed=9)[0]), v0)
    assert not np.array_equal(other.vars["w_plus"][0], batch.vars["w_plus"][0])
    assert_trees_equal(jax.tree.map(lambda a: a[1:], other.vars), jax.tree.map(lambda a: a[1:], batch.vars))
    for k in embed.HISTORY_KEYS:
        np.testing.assert_array_equal(other.history[k][:, 1:], batch.history[k][:, 1:])


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


@pytest.mark.parametrize("store", ["orbax", "local"])  # one process; several (jax.distributed): local files
@pytest.mark.parametrize("kill_at", [7, 10, 13])  # mid W_l; exactly at the phase end; mid Mk_n
def test_resume_bit_identical(tmp_path, kill_at, store, monkeypatch):
    if store == "local":
        open_store = checkpoints.open_store
        monkeypatch.setattr(checkpoints, "open_store", lambda d: open_store(d, local=True))
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
    assert sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) == [15, 16]  # the last two kept
    assert_trees_equal(resumed.vars, full.vars)
    assert_trees_equal(resumed.phase_vars, full.phase_vars)
    for k in embed.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[k], full.history[k])
    # a checkpoint of another run is refused, not silently mixed in
    with pytest.raises(ValueError, match="different run"):
        embed.embed(G, x, phases=phases, init_vars=v0, seed=2, checkpoint_dir=ckpt, checkpoint_every=3)


def test_resume_bit_identical_with_multi_step_calls(tmp_path):
    """steps_per_call=3: iterations run three per dispatch (lax.scan) between checkpoints; a run
    killed and resumed equals the uninterrupted run with the same settings, bit for bit."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = mse_schedule(w_steps=10, noise_steps=6)
    kw = dict(init_vars=v0, log_every=0, seed=1, checkpoint_every=3, steps_per_call=3)
    full = embed.embed(G, x, phases=phases, checkpoint_dir=str(tmp_path / "full"), **kw)
    seen = []

    def killer(t, m):
        seen.append(t)
        if t == 7:
            raise Kill()

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Kill):
        embed.embed(G, x, phases=phases, checkpoint_dir=ckpt, callback=killer, **kw)
    assert seen == [1, 2, 3, 4, 5, 6, 7]  # every iteration reported, in order, after its dispatch
    lines = []
    resumed = embed.embed(G, x, phases=phases, checkpoint_dir=ckpt, log=lines.append, **kw)
    assert "resumed" in lines[0] and "iteration 9/16" in lines[0]  # the dispatch 6..9 was saved
    assert_trees_equal(resumed.vars, full.vars)
    assert_trees_equal(resumed.phase_vars, full.phase_vars)
    for k in embed.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


@pytest.mark.parametrize("steps_per_call,sig", [(1, "SIGINT"), (3, "SIGTERM")])
def test_a_stop_signal_writes_a_checkpoint_where_it_stops(tmp_path, steps_per_call, sig):
    """Ctrl-C or SIGTERM (a scheduler's preemption) during a run with checkpoints: the run stops at the
    end of the running dispatch with a checkpoint there (not at the last periodic one), then the
    signal acts as it would have; the resumed run equals the uninterrupted one bit for bit. (Before,
    Ctrl-C lost every iteration since the last checkpoint and SIGTERM ended the process at once.)"""
    import signal

    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=1)
    phases = mse_schedule(w_steps=10, noise_steps=6)
    kw = dict(init_vars=v0, log_every=0, seed=1, checkpoint_every=100, steps_per_call=steps_per_call)
    full = embed.embed(G, x, phases=phases, checkpoint_dir=str(tmp_path / "full"), **kw)
    signum = getattr(signal, sig)
    raised = []

    def their_handler(n, frame):  # a program's own SIGTERM handler (the command lines raise)
        raised.append(n)
        raise Kill()

    def send(t, m):
        if t == 4:  # inside the second dispatch of three steps: it finishes first
            signal.raise_signal(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if sig == "SIGTERM":
        signal.signal(signal.SIGTERM, their_handler)
    lines = []
    ckpt = str(tmp_path / "ckpt")
    try:
        with pytest.raises(KeyboardInterrupt if sig == "SIGINT" else Kill):
            embed.embed(G, x, phases=phases, checkpoint_dir=ckpt, callback=send, log=lines.append, **kw)
        assert signal.getsignal(signal.SIGTERM) is (their_handler if sig == "SIGTERM" else before[signal.SIGTERM])
    finally:
        signal.signal(signal.SIGTERM, before[signal.SIGTERM])
    assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    stopped = 4 if steps_per_call == 1 else 6
    assert lines[-1].startswith(f"stopping at iteration {stopped}/16 on {sig}: checkpoint written to {ckpt}")
    assert raised == ([signum] if sig == "SIGTERM" else [])
    assert checkpoints.open_store(ckpt).latest_step() == stopped  # checkpoint_every=100: no other was due
    lines = []
    resumed = embed.embed(G, x, phases=phases, checkpoint_dir=ckpt, log=lines.append, **kw)
    assert f"iteration {stopped}/16" in lines[0]
    assert_trees_equal(resumed.vars, full.vars)
    assert_trees_equal(resumed.phase_vars, full.phase_vars)
    for k in embed.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


def test_a_second_stop_signal_acts_at_once(tmp_path):
    """A second Ctrl-C does not wait for the dispatch or the checkpoint."""
    import signal

    G = tiny_generator()
    x = targets(G, 1)
    v0 = embed.initial_variables(G, 1, w_init="uniform", seed=1)
    after = []

    def twice(t, m):
        if t == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises here
            after.append(t)

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        embed.embed(G, x, phases=(w_mse(6),), init_vars=v0, log_every=0, checkpoint_dir=ckpt,
                    checkpoint_every=100, callback=twice)
    assert after == [] and checkpoints.open_store(ckpt).latest_step() is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_multi_step_calls_equal_single_steps():
    """The scan path (k steps per dispatch, metrics on the device) runs the same optimisation as one
    step per call: W+ to float32 rounding, the history to 1e-5; the caller's init_vars survive the
    donation; progress lines fall where they did."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform_0.4", seed=3)
    keep = jax.tree.map(np.array, v0)
    phases = (w_mse(8), n_mse(2))
    runs = {}
    for k in (1, 4):
        lines = []
        runs[k] = embed.embed(G, x, phases=phases, init_vars=v0, log_every=4, log=lines.append, steps_per_call=k)
        assert [line.split("|")[0].strip() for line in lines] == [
            "[W_l 1/2] it 4/8 (total 4/10)", "[W_l 1/2] it 8/8 (total 8/10)", "[Mk_n 2/2] it 2/2 (total 10/10)"]
    one, many = runs[1], runs[4]
    np.testing.assert_allclose(many.phase_vars[0]["w_plus"], one.phase_vars[0]["w_plus"], atol=1e-5)
    assert np.max(np.abs(one.phase_vars[0]["w_plus"] - v0["w_plus"])) > 1e-3  # it did move
    for key in embed.HISTORY_KEYS:
        np.testing.assert_allclose(many.history[key], one.history[key], rtol=1e-5, atol=1e-6)
    # Adam at lr 5 amplifies rounding in noise entries whose gradient is near its ε (see
    # test_batch_equals_separate_runs): two noise steps agree to 2e-3 on values of size ~1.
    for a, b in zip(many.vars["noise"], one.vars["noise"]):
        np.testing.assert_allclose(a, b, atol=2e-3)
    assert_trees_equal(jax.tree.map(np.asarray, v0), keep)
    with pytest.raises(ValueError, match="steps_per_call"):
        embed.embed(G, x, phases=phases, init_vars=v0, steps_per_call=0)


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, steps_per_call):
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, seed=0)
    # a rate of 1e38 (inf is refused by the phase) takes the noise past float32 in two steps
    phases = (embed.W_l(4, percept=0.0, resize_to=None), embed.Mk_n(5, lr=1e38, resize_to=None))
    ckpt = str(tmp_path / "ckpt")
    ended = []
    with pytest.raises(embed.NonFiniteLossError, match=r"NaN/inf at iteration 6 \(phase Mk_n.*iteration 4\)") as e:
        embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, checkpoint_dir=ckpt, checkpoint_every=2,
                    on_phase_end=lambda i, v: ended.append(i), steps_per_call=steps_per_call)
    assert ended == [0]  # the W+ phase's result was handed out before the failure
    assert len(e.value.phase_vars) == 1 and e.value.history["loss"].shape == (5, 2)  # iterations 0-4 finite
    assert np.all(np.isfinite(e.value.history["loss"]))
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.latest_step() == 4


def test_style_transfer_block_with_vgg():
    """M_st from the embedding of x (render = x): the style of all of y (mask_style_y = ones) inside
    the square M_s, content (λ_mse1 on 1 − M_s) against x outside it. The masked Gram distance falls
    while the outside stays close to x; without the content term the outside drifts far. The style
    history is the standalone style_loss with y's mask (random-weight VGG, resize_to 64)."""
    G = tiny_generator()
    vgg = vgg_lib.random_vgg16(jax.random.PRNGKey(0))
    z = jax.random.normal(jax.random.PRNGKey(1), (1, G.z_dim))
    v0 = embed.initial_variables(G, 1, w_init=G.mapping(z)[0], seed=1)
    x = embed.evaluate(v0, G, jnp.zeros((1, 16, 16, 3)))[0]  # v0 embeds x exactly
    y = targets(G, 1, seed=2)
    region, outside = square(), 1 - square()
    phase = embed.M_st(20, resize_to=64)  # the default λ_s = 5e-7, λ_mse1 = 1e-5, lr 0.01

    def run(content_mask):
        masks = embed.make_masks(G, 1, mask_style=region, mask_style_y=np.ones((16, 16)), mask_mse=content_mask)
        lines = []
        r = embed.embed(G, x, target_y=y, phases=(phase,), init_vars=v0, masks=masks, vgg=vgg, log_every=20,
                        log=lines.append)
        return r, embed.evaluate(r.vars, G, x)[0][0], lines

    r, img, lines = run(outside)
    assert "style" in lines[0] and "mse1" in lines[0]
    assert_trees_equal(r.vars["noise"], v0["noise"])
    style_y_all = losses.style_loss(vgg, x, y, region[None], mask_y=np.ones((1, 16, 16, 1)), resize_to=64)
    np.testing.assert_allclose(r.history["style"][0], style_y_all, rtol=1e-5)  # mask_style_y reached the step
    assert float(style_y_all[0]) > 2 * float(losses.style_loss(vgg, x, y, region[None], resize_to=64)[0])
    # Measured: style 682 → 253 (Adam ripples on the way: 413 after one step, 420 after five);
    # PSNR against x 40.3 dB outside, 29.2 dB inside the square.
    h = r.history["style"][:, 0]
    assert h[-1] < 0.5 * h[0]
    psnr_out, psnr_in = region_psnr(img, x[0], outside), region_psnr(img, x[0], region)
    assert psnr_out > 35 and psnr_in < psnr_out - 5
    # Without content (M_m = 0: the same program, other data): style 682 → 86, but 23.7 dB outside.
    free, img_free, _ = run(0 * outside)
    np.testing.assert_array_equal(free.history["mse1"], 0.0)
    assert free.history["style"][-1, 0] < h[-1]
    assert region_psnr(img_free, x[0], outside) < psnr_out - 10


def test_grouped_and_activation_modulation_give_the_same_step():
    """Phase.fused_modconv only chooses how G's convolutions run (per-image weights in a grouped
    convolution, or scaled activations around one batched convolution, the default): one step's
    loss and new variables agree to float32 rounding."""
    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform_0.4", seed=2)
    phase = embed.W_l(1, percept=0.0, resize_to=None)
    runs = [embed.embed(G, x, phases=(dataclasses.replace(phase, fused_modconv=f),), init_vars=v0, log=None)
            for f in (False, True)]
    assert not phase.fused_modconv
    np.testing.assert_allclose(runs[0].history["loss"], runs[1].history["loss"], rtol=RTOL)
    np.testing.assert_allclose(runs[0].vars["w_plus"], runs[1].vars["w_plus"], atol=1e-6)
    assert np.max(np.abs(runs[0].vars["w_plus"] - v0["w_plus"])) > 1e-3


# --- a batch split over devices (more in tests/test_embed_folder.py, on 4 forced CPU devices) ---


def test_mesh_of_this_process_gives_the_same_run_and_refuses_an_uneven_batch():
    from i2spp_jax.engine import sharding

    G = tiny_generator()
    x = targets(G, 2)
    v0 = embed.initial_variables(G, 2, w_init="uniform", seed=3)
    phases = (w_mse(2),)  # one phase: each run compiles one step
    mesh = sharding.batch_mesh()
    plain = embed.embed(G, x, phases=phases, init_vars=v0, log_every=0)
    split = embed.embed(G, x, phases=phases, init_vars=v0, log_every=0, mesh=mesh)
    assert split.vars["w_plus"].sharding.spec == jax.sharding.PartitionSpec("batch")
    assert_trees_equal(split.vars, plain.vars)
    uneven = sharding.batch_mesh([jax.devices()[0]] * 2) if len(jax.devices()) == 1 else sharding.batch_mesh(
        jax.devices()[:2])
    with pytest.raises(ValueError, match="a batch of 3 images cannot be split over 2 devices"):
        embed.embed(G, targets(G, 3), phases=phases, init_vars=embed.initial_variables(G, 3), mesh=uneven)


def test_a_run_compiles_whole_programs_not_one_per_operation(caplog):
    """embed() compiles its programs (the masks' broadcast, the variables' copy, the optimiser's init, the
    steps), not one small program per array shape: on a GPU each of those is one more compile in the
    first call (issue 9). A target given once and masks built for one image still broadcast."""
    import logging
    import re

    G = tiny_generator()
    v0 = embed.initial_variables(G, 3, w_init="uniform_0.4", seed=4)
    masks = embed.make_masks(G, 1, n_m=[1, 1, 0, 1, 1], mask_mse=np.ones((16, 16), np.float32))
    x = np.asarray(targets(G, 1, seed=1))
    jax.clear_caches()
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        embed.embed(G, x, phases=(w_mse(4), n_mse(4)), init_vars=v0, masks=masks, log_every=0, steps_per_call=2)
        embed.embed(G, x, phases=(w_mse(4), n_mse(4)), init_vars=v0, masks=masks, log_every=0)
    names = [m.group(1) for r in caplog.records for m in [re.match(r"Compiling jit\((\w+)\)", r.getMessage())] if m]
    assert names and set(names) <= {"_broadcast_to_batch", "_copy", "init_fn", "run", "step"}, names
