"""engine.hoist: the device loop with its loop-invariant work done once, before the loop."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax.engine import hoist


def _body(carry, inv):
    """An iteration whose invariant work (a weight cast and scaled, a frozen map's finite check) is
    worth hoisting, and whose broadcast of the small bias is not."""
    x, ok = carry
    w, bias, frozen, target = inv
    w_eff = (w * 0.5).astype(jnp.bfloat16).astype(jnp.float32)
    x = jnp.tanh(x @ w_eff + bias[None, :])
    ok = ok & jnp.all(jnp.isfinite(frozen))
    return (x, ok), jnp.sum(x * frozen[: x.shape[0], : x.shape[1]]) + jnp.sum((x - (2 * target)[:8, :64]) ** 2)


def _args():
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (8, 64))
    inv = (jax.random.normal(k[1], (64, 64)), jax.random.normal(k[2], (64,)), jax.random.normal(k[3], (32, 96)),
           jax.random.normal(k[4], (128, 128)))  # the largest invariant, as the targets are
    return (x, jnp.bool_(True)), inv


def _scan_eqn(jaxpr):
    """The first scan in `jaxpr`, looked for inside nested jits too."""
    for e in jaxpr.eqns:
        if e.primitive.name == "scan":
            return e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            found = _scan_eqn(sub)
            if found is not None:
                return found
    return None


def test_same_numbers_as_the_plain_scan():
    carry, inv = _args()
    want = jax.jit(lambda c, i: jax.lax.scan(lambda c, _: _body(c, i), c, None, length=5))(carry, inv)
    got = jax.jit(lambda c, i: hoist.invariant_scan(_body, c, i, 5))(carry, inv)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert hoist.last_split()["hoisted"] and hoist.last_split()["residuals"] >= 2


def test_invariant_work_runs_before_the_loop_and_broadcasts_stay_in_it():
    """The cast weight and the finite check are computed outside the scan and read by it; the loop
    body keeps the carry's work, the bias's broadcast, which XLA fuses into its consumer, and the work
    on the largest invariant (as the targets: the loop reads it anyway)."""
    carry, inv = _args()
    jaxpr = jax.make_jaxpr(lambda c, i: hoist.invariant_scan(_body, c, i, 5))(carry, inv).jaxpr
    scan = _scan_eqn(jaxpr)
    body = [e.primitive.name for e in scan.params["jaxpr"].jaxpr.eqns]
    outside = [e.primitive.name for e in jaxpr.eqns if e is not scan]
    assert "convert_element_type" not in body and "is_finite" not in body
    assert "convert_element_type" in outside and "is_finite" in outside
    assert "tanh" in body and "broadcast_in_dim" in body and "dot_general" in body
    assert "mul" in body and any(str(v.aval.shape) == "(128, 128)" for v in scan.invars)  # 2 * target: in it
    # the residuals: the cast weight, the finite check (no [8, 64] bias broadcast, no scaled target)
    assert hoist.last_split()["residual_bytes"] <= 64 * 64 * 4 + 8


def test_no_residual_larger_than_half_the_largest_invariant():
    """An outer product of two small invariants is larger than the loop should read from memory: it
    stays in the loop (fused into its consumer), and only small values are computed before it."""
    def body(x, inv):
        a, b, target = inv
        outer = (a * 2.0)[:, None] * b[None, :]  # [256, 256] from two [256] vectors
        return jnp.tanh(x @ outer) + target[:4, :256], None

    k = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(k[0], (4, 256))
    inv = (jax.random.normal(k[1], (256,)), jax.random.normal(k[2], (256,)), jax.random.normal(k[3], (128, 256)))
    jaxpr = jax.make_jaxpr(lambda c, i: hoist.invariant_scan(body, c, i, 3))(x, inv).jaxpr
    split = hoist.last_split()
    assert split["hoisted"] and split["residual_bytes"] <= 256 * 4  # a * 2.0, not the [256, 256] product
    assert "(256, 256)" not in " ".join(split["largest"])
    assert all(v.aval.shape != (256, 256) for v in _scan_eqn(jaxpr).invars)
    want = jax.lax.scan(lambda c, _: body(c, inv), x, None, length=3)
    got = jax.jit(lambda c, i: hoist.invariant_scan(body, c, i, 3))(x, inv)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), got, want)


def test_plain_scan_when_partial_evaluation_fails(monkeypatch, caplog):
    """A JAX whose internal refuses: the plain scan, the same numbers, one log line saying why."""
    from jax._src.interpreters import partial_eval as pe

    def refuse(*a, **k):
        raise TypeError("a changed signature")

    monkeypatch.setattr(pe, "partial_eval_jaxpr_custom", refuse)
    carry, inv = _args()
    want = jax.jit(lambda c, i: jax.lax.scan(lambda c, _: _body(c, i), c, None, length=3))(carry, inv)
    with caplog.at_level(logging.WARNING, logger="i2spp_jax.engine.hoist"):
        got = jax.jit(lambda c, i: hoist.invariant_scan(_body, c, i, 3))(carry, inv)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    split = hoist.last_split()
    assert not split["hoisted"] and "changed signature" in split["why"]
    assert any("without hoisting" in r.message for r in caplog.records)


def test_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("I2SPP_LOOP_HOISTING", "0")
    carry, inv = _args()
    jaxpr = jax.make_jaxpr(lambda c, i: hoist.invariant_scan(_body, c, i, 5))(carry, inv).jaxpr
    assert "convert_element_type" in str(_scan_eqn(jaxpr).params["jaxpr"])
    assert not hoist.last_split()["hoisted"] and "I2SPP_LOOP_HOISTING" in hoist.last_split()["why"]


@pytest.mark.parametrize("update_noise", [False, True])
def test_engine_loop_hoists_and_keeps_frozen_groups_bit_for_bit(update_noise):
    """The engine's k-per-dispatch loop (compiled_steps) runs hoisted, and a frozen group comes back
    with exactly the bits it went in with, as the optimiser's zero update left it."""
    from i2spp_jax import embed
    from i2spp_jax.engine import step as step_lib
    from tests.test_embed import n_mse, targets, tiny_generator, w_mse

    G = tiny_generator()
    x = jnp.asarray(targets(G, 2))
    v0 = embed.initial_variables(G, 2, w_init="uniform_0.4", seed=3)
    v0["noise"][0] = v0["noise"][0].at[0, 0, 0].set(-0.0)
    phase = n_mse(3) if update_noise else w_mse(3)
    masks = embed.make_masks(G, 2)
    opt = step_lib.compiled_init(phase)(v0)
    keep = jax.tree.map(np.array, v0)
    args = (G, None, x, x, masks, None, None)
    vars, _, metrics = step_lib.compiled_steps(phase, 3)(jax.tree.map(jnp.array, v0), opt, *args)
    assert hoist.last_split()["hoisted"]
    # the finite check of the frozen group's leaves runs once, before the loop, not in it
    body = _scan_eqn(jax.make_jaxpr(step_lib.compiled_steps(phase, 3))(v0, opt, *args).jaxpr).params["jaxpr"]
    live = jax.tree.leaves(v0["noise" if update_noise else "w_plus"])
    assert str(body).count("is_finite") == len(live) + 1  # the live leaves' and the loss's
    assert bool(np.all(metrics["finite"]))
    frozen = "w_plus" if update_noise else "noise"
    moved = "noise" if update_noise else "w_plus"
    for a, b in zip(jax.tree.leaves(vars[frozen]), jax.tree.leaves(keep[frozen])):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in
               zip(jax.tree.leaves(vars[moved]), jax.tree.leaves(keep[moved]))) > 0
