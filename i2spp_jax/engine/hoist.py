"""The device loop with its loop-invariant work done once, before the loop (`invariant_scan`).

The engine runs k iterations per dispatch in a `lax.scan`. Much of one iteration depends only on what
the loop never changes: the generator's and VGG16's weights (scaled by their gains, cast to bf16 in
the bf16 mode), the frozen variables (the noise maps in the W+ phase, times their strengths, and
their finite check), the targets and masks. XLA's CPU compiler hoists such work out of a while loop;
its GPU compiler has no loop-invariant code motion, so on a GPU every iteration redid it: in the W+
step at config-f, batch 8, 112 of the 508 kernels of a bf16 iteration and 62 of 427 in TF32 (a
compile-only H200, `experiments.gpu_hlo`; BUILD_NOTES.md, issue 9).

`invariant_scan` traces one iteration to a jaxpr and splits it with JAX's own partial evaluation
(the machinery of `jax.checkpoint`'s policies): what depends on the invariants alone is computed
before the loop, and the loop body reads the results. Only work worth a kernel of its own is hoisted
(`HOISTED`: arithmetic, conversions, comparisons, reductions), on inputs at most half the size of
the largest invariant input; and no value the loop reads back from memory may exceed that size
either: work with a larger result is kept in the loop (a second partial evaluation), where XLA fuses
it into the kernels that read it. So the weights, the noise maps and what derives from them move out,
while work on the targets themselves (the largest invariants at config-f), which the loop reads
anyway, stays in the loop (hoisted, it added 0.1 GB of reads per bf16 W+ iteration), and so do the
noise phase's modulated weights (75 MB each per 512-channel layer at batch 8).
Broadcasts, reshapes, transposes, reversals and constants stay in the loop (a reversed kernel hoisted
out hid the transposed convolutions from XLA's cuDNN pattern: 2.5 GB more per iteration).
The numbers are the same computation's: the same operations on the same values, in the same order
(bit for bit on the CPU in the tests; on a GPU XLA may fuse them differently, within float rounding).

The split uses `jax._src.interpreters.partial_eval.partial_eval_jaxpr_custom`, a JAX internal. If a
JAX version lacks it or refuses the jaxpr, `invariant_scan` runs the plain scan and says so once in
the log; `last_split()` tells a benchmark which of the two ran. I2SPP_LOOP_HOISTING=0 in the
environment turns the split off (the loop as it was: a benchmark's control).
"""

import logging
import os

import jax
import numpy as np

HOISTED = frozenset({
    "add", "sub", "mul", "div", "neg", "max", "min", "abs", "sign", "exp", "exp2", "log", "log1p", "sqrt",
    "rsqrt", "integer_pow", "pow", "square", "tanh", "logistic", "erf", "floor", "ceil", "round", "clamp",
    "convert_element_type", "select_n", "is_finite", "and", "or", "not", "gt", "ge", "lt", "le", "eq", "ne",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_and", "reduce_or",
})

_log = logging.getLogger(__name__)
_last = {"hoisted": False, "residuals": 0, "residual_bytes": 0, "why": "not run", "largest": []}


def last_split() -> dict:
    """What the last `invariant_scan` trace did: {"hoisted": bool, "residuals": values computed before
    the loop and read by it, "residual_bytes": their size, "largest": the five largest, "why": the
    reason when nothing was hoisted}."""
    return dict(_last)


def invariant_scan(body, carry, invariants, length: int):
    """`lax.scan(lambda c, _: body(c, invariants), carry, None, length=length)`, with the part of
    `body` that depends on `invariants` alone computed once, before the loop.

    body(carry, invariants) -> (new carry, per-iteration outputs); returns (final carry, the outputs
    stacked over the iterations), as `lax.scan` does.
    """
    flat_c, tree_c = jax.tree.flatten(carry)
    flat_i, tree_i = jax.tree.flatten(invariants)
    nc = len(flat_c)
    out_tree = []

    def flat_body(*args):
        new_c, ys = body(tree_c.unflatten(args[:nc]), tree_i.unflatten(args[nc:]))
        flat_out, tree = jax.tree.flatten((new_c, ys))
        out_tree.append(tree)
        return flat_out

    def plain():
        return jax.lax.scan(lambda c, _: body(c, invariants), carry, None, length=length)

    if os.environ.get("I2SPP_LOOP_HOISTING", "1") == "0":  # a measurement's control: the loop as it was
        _fallback("off (I2SPP_LOOP_HOISTING=0)", quiet=True)
        return plain()
    closed = jax.make_jaxpr(flat_body)(*flat_c, *flat_i)
    limit = max((_nbytes(x) for x in flat_i), default=0)
    split = _split(closed.jaxpr, nc, len(flat_i), limit)
    if split is None:
        return plain()
    known, staged = split
    try:
        res = _eval(known, closed.consts, *flat_i)

        def hoisted(c, _):
            outs = _eval(staged, closed.consts, *res, *c, *flat_i)
            return outs[:nc], outs[nc:]
        c_out, ys = jax.lax.scan(hoisted, flat_c, None, length=length)
    except Exception as e:  # noqa: BLE001 (a JAX internal's change: the plain loop, said once)
        _fallback(f"the split loop did not trace: {type(e).__name__}: {str(e)[:200]}")
        return plain()
    return jax.tree.unflatten(out_tree[0], [*c_out, *ys])


def _eval(jaxpr, consts, *args):
    from jax.extend import core as jex

    return jex.jaxpr_as_fun(jex.ClosedJaxpr(jaxpr, consts))(*args)


_MAX_PASSES = 4  # partial evaluations, each keeping in the loop what made a too-large residual before


def _signature(avals) -> tuple:
    return tuple((tuple(a.shape), str(a.dtype)) for a in avals if hasattr(a, "shape"))


def _nbytes(x) -> int:
    return int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _split(jaxpr, n_carry: int, n_inv: int, limit_bytes: int):
    """(known jaxpr: invariants -> residuals, staged jaxpr: residuals, carry, invariants -> outputs),
    or None when nothing is hoisted (the reason in `last_split()`)."""
    try:
        from jax._src.interpreters import partial_eval as pe
    except ImportError as e:  # a JAX without the internal: the plain loop
        return _fallback(f"no partial_eval_jaxpr_custom in this JAX ({e})")

    def policy_without(banned: frozenset):  # a new function each pass: JAX caches the split by policy
        def policy(prim, *avals, **_):
            inputs = max((_nbytes(a) for a in avals if hasattr(a, "shape")), default=0)
            return prim.name in HOISTED and 2 * inputs <= limit_bytes and (prim.name, _signature(avals)) not in banned
        return policy

    banned = frozenset()  # (primitive, input avals) whose results came out too large to be read from memory
    try:
        for _ in range(_MAX_PASSES):  # every output is unknown, so the known jaxpr returns residuals only
            known, staged, _, _, n_res = pe.partial_eval_jaxpr_custom(
                jaxpr, [True] * n_carry + [False] * n_inv, True, True, True, policy_without(banned))
            made_by = {v: e for e in known.eqns for v in e.outvars}
            large = {(made_by[v].primitive.name, _signature([x.aval for x in made_by[v].invars]))
                     for v in known.outvars if v in made_by and 2 * _nbytes(v.aval) > limit_bytes}
            if not large - banned:
                break
            banned = banned | large
        known, _ = pe.dce_jaxpr(known, [True] * len(known.outvars), instantiate=True)
        staged, _ = pe.dce_jaxpr(staged, [True] * len(staged.outvars), instantiate=True)
    except Exception as e:  # noqa: BLE001 (an internal's refusal: the plain loop, said once)
        return _fallback(f"partial evaluation failed: {type(e).__name__}: {str(e)[:200]}")
    if not n_res:
        return _fallback("no loop-invariant work worth hoisting")
    sizes = sorted(((_nbytes(v.aval), f"{v.aval.dtype}{list(v.aval.shape)}") for v in known.outvars), reverse=True)
    _last.update(hoisted=True, residuals=n_res, residual_bytes=sum(b for b, _ in sizes), why="",
                 largest=[name for _, name in sizes[:5]])
    return known, staged


def _fallback(why: str, quiet: bool = False):
    if _last.get("why") != why and not quiet:
        _log.warning("the device loop runs without hoisting its loop-invariant work: %s", why)
    _last.update(hoisted=False, residuals=0, residual_bytes=0, why=why, largest=[])
    return None
