"""The driver: runs a sequence of phases on a batch of images, with progress, checkpoints, resume.

    result = embed(G, target, phases=(W_l(200, masks="known"), Mk_n(1000, masks="known", y="previous")),
                   init_vars=initial_variables(G, B), masks={"known": make_masks(G, 1, mask_mse=m)},
                   vgg=vgg)

One call runs a whole algorithm: each phase picks its mask set and its y; a single target, mask or
edit (leading axis 1 or none) is broadcast to the batch. The resume fingerprint covers everything
that makes a run: the phases, the shapes, the seed, the generator (a digest of its weights), and a
hash of the targets, masks, edits and initial variables.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import io
from i2spp_jax.engine import checkpoints, interrupts, sharding
from i2spp_jax.engine import step as step_lib
from i2spp_jax.engine.phases import Phase, in_compute_dtype, modconv_for, phase_key
from i2spp_jax.engine.step import LOSS_TERMS
from i2spp_jax.engine.variables import Vars, device_array, make_masks
from i2spp_jax.generator import Generator
from i2spp_jax.vgg import VGG16

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("loss",) + LOSS_TERMS + ("psnr",)
# float32_above_db="auto" hands a bf16 phase over to float32 this far under bf16's rounding floor
# (`bf16_floor_db`): there bf16's rounding error is a third of the remaining error in amplitude, and
# beyond it the W+ phase stalls (BUILD_NOTES.md, "The bf16 mode's accuracy").
AUTO_MARGIN_DB = 10.0


class NonFiniteLossError(FloatingPointError):
    """The loss or the variables became NaN/inf; the last good checkpoint is kept.

    Attributes: history (the finished iterations' history), phase_vars (finished phases' results),
      images (the batch indices of the images that became NaN/inf).
    """


class CheckpointMismatchError(ValueError):
    """checkpoint_dir holds a checkpoint of another run (other targets, masks, phases, seed,
    generator, or a version of the engine whose fingerprint differs); nothing was restored."""


@dataclasses.dataclass
class EmbedResult:
    vars: Vars  # final variables, batched
    phase_vars: list  # the variables at the end of each phase
    history: dict  # {"loss", "mse1", ..., "psnr": [T, B] float32, "phase": [T] int32}; T = iterations
    phases: tuple  # the Phase settings that ran
    seconds: float  # wall time of this call's optimisation (without a resumed run's earlier part)
    iterations_run: int = 0  # iterations this call ran (a resumed run's earlier ones not counted)
    # per phase, how many of this call's iterations ran in the phase's compute_dtype (the bf16 mode's
    # bf16 part; its head, tail and the iterations after a float32_above_db switch ran in float32)
    low_dtype_iterations: tuple = ()


def bf16_floor_db(G: Generator, vars: Vars) -> float:
    """How close a bf16 render comes to the float32 one: the PSNR between the two renders of the
    batched `vars` (the batch's lowest), rounded to 0.1 dB. The demo generator's is 45-46 dB.

    Rendered as the engine's programs render (`step.render` under vmap: modulated activations around
    one shared convolution), not with G.synthesis's default grouped convolution, whose one group per
    image made the two renders of 8 config-f images at 1024 exhaust 24 GB on the CPU (batch 1: 1.0 GB
    and 8 s; batch 2: 3.8 GB and 39 s). The grouped form's floor was about 1 dB higher on the demo
    (46.1-46.6 against 45.2-45.6 dB): that form is not the one the bf16 mode runs."""
    a, b = _floor_renders(G, vars)
    return round(float(jnp.min(step_lib.psnr(a, b))), 1)


@jax.jit
def _floor_renders(G, vars):
    return tuple(jax.vmap(lambda v: step_lib.render(G, v, dtype=d)[0])(vars) for d in (None, "bfloat16"))


def data_hash(*trees) -> str:
    """sha256 (16 hex digits) of pytrees' structure, shapes and float32 values."""
    h = hashlib.sha256()
    for tree in trees:
        leaves, treedef = jax.tree.flatten(tree)
        h.update(str(treedef).encode())
        for leaf in leaves:
            a = np.ascontiguousarray(np.asarray(leaf, np.float32))
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _fingerprint(G, g_digest: str, phases, vars, seed, data):
    shapes = [list(np.shape(x)) for x in jax.tree.leaves(vars)]
    return json.dumps({"phases": [phase_key(p) for p in phases], "shapes": shapes, "seed": seed,
                       "generator": [G.img_resolution, G.num_ws, G.w_dim], "data": data,
                       "generator_digest": g_digest})


def _same_run(theirs: Optional[str], mine: str) -> bool:
    """Whether a checkpoint's fingerprint is this run's; one written before fingerprints held the
    generator's digest is this run's when all else agrees (it is then adopted: saved with the digest)."""
    if theirs == mine:
        return True
    try:
        theirs_d, mine_d = json.loads(theirs), json.loads(mine)
    except (TypeError, ValueError):
        return False
    return "generator_digest" not in theirs_d and theirs_d == {k: v for k, v in mine_d.items() if k != "generator_digest"}


def _check_vars(G, vars) -> int:
    """Checks batched variables against the generator; returns the batch size."""
    if not isinstance(vars, dict) or set(vars) != {"w_plus", "noise"}:
        raise ValueError("init_vars must be {'w_plus': ..., 'noise': [...]} (see initial_variables)")
    batch = np.shape(vars["w_plus"])[0] if np.ndim(vars["w_plus"]) == 3 else None
    if np.shape(vars["w_plus"]) != (batch, G.num_ws, G.w_dim):
        raise ValueError(f"init_vars['w_plus'] has shape {np.shape(vars['w_plus'])}; expected "
                         f"[B, {G.num_ws}, {G.w_dim}] for this generator (initial_variables(G, batch=B))")
    shapes = [tuple(np.shape(m)) for m in vars["noise"]]
    want = [(batch,) + s for s in G.noise_shapes]
    if shapes != want:
        raise ValueError(f"init_vars['noise'] has shapes {shapes}; expected {want} ({G.noise_names})")
    return batch


def _check_targets(G, target, name, batch):
    t = np.asarray(target)
    one = (G.img_resolution, G.img_resolution, G.img_channels)
    if t.shape in (one, (1,) + one):  # a single target: every image of the batch gets it
        t = np.broadcast_to(t.reshape(one), (batch,) + one)
    want = (batch,) + one
    if t.shape != want:
        raise ValueError(f"{name} has shape {t.shape}; expected {want} or {one} (NHWC at the generator's "
                         "resolution)")
    io.check_pixels(t, name, in_range=False)
    return device_array(t)


def _broadcast(tree, B, what):
    """Leaves with a leading axis of 1 -> B; any other leading size than B is refused."""
    def check(path, leaf):
        shape = np.shape(leaf)
        if not shape or shape[0] not in (1, B):
            raise ValueError(f"{what}{jax.tree_util.keystr(path)} has shape {shape}; expected a leading "
                             f"batch axis of {B} or 1 (build masks with make_masks(G, {B}, ...) or make_masks(G, 1, ...))")
    jax.tree_util.tree_map_with_path(check, tree)
    return _broadcast_to_batch(tree, B)


@functools.partial(jax.jit, static_argnums=1)
def _broadcast_to_batch(tree, B):
    # One program for the whole tree: leaf by leaf, each shape compiled a small program of its own,
    # a first-call cost on a GPU (issue 9).
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (B,) + a.shape[1:]), tree)


def _mask_sets(G, masks, phases, B) -> dict:
    """{set name: batched mask tree} with one entry per name the phases use."""
    if masks is None:
        masks = make_masks(G, 1)
    if "vars" in masks and "loss" in masks:  # one mask tree: every phase uses it
        masks = {name: masks for name in {p.masks for p in phases}}
    missing = sorted({p.masks for p in phases} - set(masks))
    if missing:
        raise ValueError(f"phases use the mask sets {missing} but masks has only {sorted(masks)}: pass "
                         "masks={name: make_masks(G, ...)} with every name the phases give (Phase.masks)")
    return {name: _broadcast(masks[name], B, f"masks[{name!r}]") for name in {p.masks for p in phases}}


def _format_line(phase_i, phases, s, t, total, m, rate):
    ph = phases[phase_i]
    terms = " ".join(f"{k} {np.mean(m[k]):.4g}" for k in LOSS_TERMS if getattr(ph.weights, k))
    return (f"[{ph.name} {phase_i + 1}/{len(phases)}] it {s}/{ph.num_steps} (total {t}/{total}) | "
            f"loss {np.mean(m['loss']):.4g} | {terms} | PSNR {np.mean(m['psnr']):.2f} dB "
            f"(min {np.min(m['psnr']):.2f}) | " + (f"{rate:.2f} it/s" if np.isfinite(rate) else "first call (compiling)"))


def _print(msg: str) -> None:
    print(msg, flush=True)


def embed(G: Generator, target_x, *, phases: Sequence[Phase], init_vars: Vars, target_y=None,
          masks: Optional[dict] = None, edits: Optional[dict] = None, vgg=None, seed: int = 0,
          log_every: int = 100, log: Optional[Callable[[str], None]] = _print, checkpoint_dir: Optional[str] = None,
          checkpoint_every: int = 0, on_phase_end: Optional[Callable[[int, Vars], None]] = None,
          callback: Optional[Callable[[int, dict], None]] = None,
          steps_per_call: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None,
          compute_dtype: Optional[str] = None, float32_tail: float = 0.1, float32_head: float = 0.1,
          float32_above_db: Union[None, float, str] = "auto") -> EmbedResult:
    """Runs `phases` in order on a batch of images, each with its own target, masks and start.

    Args:
      G: the generator.
      target_x: [B, H, W, C] in [-1, 1], the images to embed (x of Eq. 1); [H, W, C] = one for all.
      phases: e.g. `schedule("w_then_noise", 5000, 3000)` or (W_l(200), Mk_n(1000, y="previous")).
      init_vars: batched variables from `initial_variables(G, B, ...)`.
      target_y: [B, H, W, C] in [-1, 1], y of Eq. 1 (defaults to target_x); [H, W, C] = one for all.
        A phase with y="previous" uses the render of its starting variables instead.
      masks: from `make_masks(G, B or 1, ...)` for every phase, or {name: make_masks(...)} with the
        names the phases give (Phase.masks, default "default"); None = no masks.
      edits: activation edits {point: activations.Mix} with a leading batch axis (B or 1), applied in
        every render (the optimisation runs through them); None = none.
      vgg: VGG-16 pytree (needed when a phase has λ_p or λ_s > 0).
      seed: recorded in checkpoints (the draws themselves happen in `initial_variables`).
      log_every: a progress line every this many iterations (0 = never).
      log: where progress lines go (default: print; None = nowhere).
      checkpoint_dir: orbax checkpoints (variables, optimiser state, step, seed, history) go here
        every `checkpoint_every` iterations and at each phase end; a run finding one there resumes
        from the latest and ends bit-identical to an uninterrupted run. While such a run runs (in the
        main thread), Ctrl-C or SIGTERM stops it at the end of the running dispatch, with a
        checkpoint written there, and then acts as it would have (`interrupts`; a second one acts at once).
      on_phase_end: called with (phase index, batched vars) when a phase finishes.
      callback: called with (iteration, metrics of that iteration as numpy) after every iteration
        (after each dispatch, for every iteration it ran).
      steps_per_call: iterations per dispatch (`compiled_steps`: a `lax.scan` on the device, metrics
        read back once per call, buffers donated), used where no progress line, checkpoint or phase
        end falls inside; other iterations run one per call. None = `default_steps_per_call()`.
      mesh: split the batch over this mesh's devices (`sharding.batch_mesh()`; B a multiple of
        its size); G and VGG are copied to each device. None = the default device.
      compute_dtype: "bfloat16" runs every phase in the bf16 mode (`Phase.compute_dtype`: G's and
        VGG's convolutions in bfloat16; variables, Adam, losses and metrics in float32) except its
        last `float32_tail` fraction of iterations (`Phase.float32_steps`), which run in float32 with
        the same optimiser state, and its first `float32_head` fraction (`Phase.float32_head_steps`,
        at most what the tail leaves), also in float32, and, once an image of the batch reaches `float32_above_db` dB of PSNR
        (`Phase.float32_above_db`; "auto" = `AUTO_MARGIN_DB` under `bf16_floor_db` of init_vars;
        None = never), the rest of the phase in float32; "float32" runs every phase in float32;
        None = each phase's own.
    Raises:
      NonFiniteLossError: the loss or the variables became NaN/inf (the last good checkpoint stays).
    """
    phases = tuple(phases)
    B = _check_vars(G, init_vars)
    if compute_dtype is not None:
        if not (0 <= float32_tail <= 1 and 0 <= float32_head <= 1):
            raise ValueError(f"float32_tail and float32_head must be in [0, 1], got {float32_tail} and {float32_head}")
        low = compute_dtype != "float32"
        if float32_above_db == "auto":
            float32_above_db = bf16_floor_db(G, init_vars) - AUTO_MARGIN_DB if low else None
        elif float32_above_db is not None and not isinstance(float32_above_db, (int, float)):
            raise ValueError(f"float32_above_db must be 'auto', None or a PSNR in dB, got {float32_above_db!r}")
        phases = tuple(in_compute_dtype(p, compute_dtype, tail=float32_tail, head=float32_head,
                                        above_db=float32_above_db) for p in phases)
    if vgg is not None and not isinstance(vgg, VGG16):
        raise TypeError(f"vgg is a {type(vgg).__name__}; give an i2spp_jax.VGG16 (i2spp_jax.load_vgg16()) or None")
    target_x = _check_targets(G, target_x, "target_x", B)
    target_y = target_x if target_y is None else _check_targets(G, target_y, "target_y", B)
    mask_sets = _mask_sets(G, masks, phases, B)
    edits = None if not edits else _broadcast(edits, B, "edits")
    place = lambda tree: tree  # noqa: E731 (the default device)
    # the caller's G, before it is replicated: G.digest() caches by its arrays, so a folder run hashes it once
    g_digest = G.digest() if checkpoint_dir else None
    if mesh is not None:
        sharding.check_batch(mesh, B)
        place = functools.partial(sharding.shard_batch, mesh=mesh)
        G, vgg = sharding.replicate((G, vgg), mesh)
        target_x, target_y, mask_sets, edits = place((target_x, target_y, mask_sets, edits))
    log = log or (lambda _: None)
    if any(p.weights.percept or p.weights.style for p in phases) and vgg is None:
        raise ValueError("a phase uses the perceptual or style term (λ_p / λ_s > 0) but no vgg was given")
    total = sum(p.num_steps for p in phases)
    starts = np.cumsum([0] + [p.num_steps for p in phases])

    chunk = default_steps_per_call() if steps_per_call is None else int(steps_per_call)
    if chunk < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    vars = place(_copy(init_vars))  # our own buffers: the multi-step calls donate them
    history = {k: np.full((total, B), np.nan, np.float32) for k in HISTORY_KEYS}
    history["phase"] = np.repeat(np.arange(len(phases), dtype=np.int32), [p.num_steps for p in phases])
    phase_vars = []
    t = 0  # iterations done
    opt_state = None

    mgr = fingerprint = None
    if checkpoint_dir:
        # Only a run that checkpoints needs it: hashing reads every target, mask and variable back to
        # the host (0.5 s for 8 images at 1024x1024 on the 2-core CPU; on a GPU, at 50 iterations per
        # call, that was a fifth of the call).
        fingerprint = _fingerprint(G, g_digest, phases, vars, seed,
                                   data_hash(target_x, target_y, mask_sets, edits or {}, vars))
        mgr = checkpoints.open_store(checkpoint_dir)
        latest = mgr.latest_step()
        if latest is not None:
            vars, opt_state, phase_vars, history, t = _resume(mgr, latest, phases, starts, vars, history,
                                                             fingerprint, checkpoint_dir)
            vars, opt_state, phase_vars = place((vars, opt_state, phase_vars))
            log(f"resumed from {checkpoint_dir} at iteration {t}/{total}")
    t_first = t

    saved = [t]  # the iteration of the newest checkpoint (the resumed one; a new run has none at 0)

    def save(t_now, pi):
        if mgr is None:
            return
        state = {"vars": vars, "opt_state": opt_state, "phase_vars": phase_vars,
                 "history": {k: history[k] for k in HISTORY_KEYS}}
        mgr.save(t_now, state, {"step": int(t_now), "phase": int(pi), "seed": seed, "fingerprint": fingerprint})
        saved[0] = t_now

    t_start = time.perf_counter()
    low_runs = [0] * len(phases)
    # A run that checkpoints stops on SIGINT/SIGTERM at the end of its dispatch, with a checkpoint there.
    stop = interrupts.hold(mgr is not None)
    try:
        for pi, phase in enumerate(phases):
            if t >= starts[pi + 1] and len(phase_vars) > pi:
                continue  # finished before a resume
            if opt_state is None or t == starts[pi]:
                opt_state = place(step_lib.compiled_init(phase)(vars))
            x = target_y if phase.x == "y" else target_x
            y = _phase_y(phase, G, target_x, target_y, phase_vars[pi - 1] if pi else init_vars, edits)
            masks = mask_sets[phase.masks]
            # XLA cannot split the grouped convolution's groups over devices (it fails to compile,
            # jax 0.10.2): a batch split over devices always modulates activations.
            grouped = modconv_for(phase, B, jax.default_backend()) and (mesh is None or mesh.size == 1)
            # The phase's iterations in [head, switch) run in its compute dtype, the others in float32.
            low_dtype = phase.compute_dtype != "float32"
            head = phase.float32_head_steps if low_dtype else 0
            switch = phase.num_steps - phase.float32_steps if low_dtype else phase.num_steps
            above = phase.float32_above_db if low_dtype else None

            def reached(lo, hi):  # an image's PSNR reached `above` in iterations [lo, hi) (history: so a resume agrees)
                return above is not None and hi > lo and bool(np.max(history["psnr"][lo:hi]) >= above)
            precise = reached(starts[pi], t)  # float32 from here to the phase's end
            programs = {}

            def program(low: bool):  # (step settings, data) of the bf16 part or the float32 head and tail
                if low not in programs:
                    run = dataclasses.replace(phase, fused_modconv=grouped, float32_steps=0, float32_head_steps=0)
                    if not low:
                        run = dataclasses.replace(run, compute_dtype="float32", vgg_dtype=None)
                    feats = step_lib.target_features(vgg, x, y, run)  # once per phase: the targets are fixed
                    programs[low] = run, (G, vgg, x, y, masks, edits, feats)
                return programs[low]
            tick, tick_t = time.perf_counter(), t
            first_call = True
            while t < starts[pi + 1]:
                s = t - starts[pi]
                low = head <= s < switch and not precise
                run_as, data = program(low)
                to_event = _to_next_event(s, t, phase.num_steps, log_every, checkpoint_every)
                for edge in (head, switch):  # one program per dispatch
                    to_event = min(to_event, edge - s) if s < edge else to_event
                k = chunk if to_event >= chunk else 1
                if k > 1:
                    vars, opt_state, ms = step_lib.compiled_steps(run_as, k)(vars, opt_state, *data)
                    ms = jax.device_get(ms)  # [k, B] per metric: one read-back per k iterations
                else:
                    new_vars, new_opt, m = step_lib.compiled_step(run_as)(vars, opt_state, *data)
                    ms = {key: np.asarray(v)[None] for key, v in jax.device_get(m).items()}
                    if np.all(ms["finite"]):
                        vars, opt_state = new_vars, new_opt
                per_iteration = [{key: v[j] for key, v in ms.items()} for j in range(k)]
                low_runs[pi] += k if low and low_dtype else 0
                for m in per_iteration:
                    if not np.all(m["finite"]):
                        _raise_nonfinite(m, t, phase, mgr, checkpoint_dir, history, phase_vars)
                    for key in HISTORY_KEYS:
                        history[key][t] = m[key]
                    t += 1
                precise = precise or reached(t - k, t)  # decided per dispatch: the next one runs float32
                s = t - starts[pi]
                if first_call:  # leave compilation out of the rate
                    tick, tick_t, first_call = time.perf_counter(), t, False
                if log_every and (s % log_every == 0 or s == phase.num_steps):
                    now = time.perf_counter()
                    rate = (t - tick_t) / (now - tick) if t > tick_t else float("nan")
                    log(_format_line(pi, phases, s, t, total, m, rate))
                    tick, tick_t = now, t
                if s == phase.num_steps:
                    phase_vars.append(_copy(vars))  # kept: the next call donates `vars`
                    save(t, pi)
                    if on_phase_end is not None:
                        on_phase_end(pi, phase_vars[-1])
                elif checkpoint_every and t % checkpoint_every == 0:
                    save(t, pi)
                if callback is not None:  # after the dispatch's checkpoint, as with one step per call
                    for j, m_j in enumerate(per_iteration):
                        callback(t - k + 1 + j, m_j)
                if stop.pending is not None:  # Ctrl-C or SIGTERM: checkpoint here, then stop as asked
                    if saved[0] != t:
                        save(t, pi)
                    mgr.wait_until_finished()
                    log(f"stopping at iteration {t}/{total} on {stop.name}: checkpoint written to {checkpoint_dir}; "
                        "the same call resumes from it")
                    stop.deliver()
            if phase.num_steps == 0:
                phase_vars.append(_copy(vars))
                if on_phase_end is not None:
                    on_phase_end(pi, phase_vars[-1])
            opt_state = None
    finally:
        if mgr is not None:
            mgr.wait_until_finished()
            mgr.close()
        stop.release()  # a signal held after the last dispatch acts now
    return EmbedResult(vars=vars, phase_vars=phase_vars, history=history, phases=phases,
                       seconds=time.perf_counter() - t_start, iterations_run=t - t_first,
                       low_dtype_iterations=tuple(low_runs))


def default_steps_per_call() -> int:
    """25 iterations per dispatch on a GPU, 1 elsewhere. On an H200 (config-f generator at 1024, VGG
    at 256, TF32, batch 8) the 25-step `lax.scan` raised the W+ step from 160 to 188 img-it/s and the
    noise step from 175 to 202 (BUILD_NOTES.md, issue 9). On the CPU the scan ran 3-4x slower per
    iteration than single steps (XLA's CPU backend compiles the loop body without its fast
    convolution path). 25 divides the usual log_every = 100 and the paper's phase lengths."""
    return 25 if jax.default_backend() == "gpu" else 1


def _to_next_event(s: int, t: int, num_steps: int, log_every: int, checkpoint_every: int) -> int:
    """Iterations from phase iteration s (run iteration t) to the next phase end, progress line or
    checkpoint: a multi-step call never runs past one."""
    ends = [num_steps - s]
    if log_every:
        ends.append(log_every - s % log_every)
    if checkpoint_every:
        ends.append(checkpoint_every - t % checkpoint_every)
    return min(ends)


@jax.jit
def _copy(tree):
    """Fresh buffers (the multi-step calls donate theirs), in one program for the whole tree."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def _phase_y(phase, G, target_x, target_y, start_vars, edits):
    """Eq. 1's y for `phase`: target_y, target_x, or the render of the phase's starting variables."""
    if phase.y == "x":
        return target_x
    if phase.y == "previous":
        return step_lib.evaluate(jax.tree.map(jnp.asarray, start_vars), G, target_x, edits)[0]
    return target_y


def _resume(mgr, latest, phases, starts, vars, history, fingerprint, directory):
    meta = mgr.meta(latest)
    if not _same_run(meta.get("fingerprint"), fingerprint):
        raise CheckpointMismatchError(f"the checkpoint in {directory} belongs to a different run (other phases, shapes, "
                         f"seed, generator or weights); use a new checkpoint directory or delete it.\n"
                         f" checkpoint: {meta.get('fingerprint')}\n this run:   {fingerprint}")
    t = int(meta["step"])
    pi = int(meta["phase"])
    done = sum(1 for s in starts[1:] if s <= t)  # phases finished at t
    template = {"vars": vars, "opt_state": step_lib.compiled_init(phases[pi])(vars),
                "phase_vars": [vars] * done, "history": {k: history[k] for k in HISTORY_KEYS}}
    state, _ = mgr.restore(latest, template)
    history = dict(history, **{k: np.array(v) for k, v in state["history"].items()})
    opt_state = None if t == starts[pi + 1] else state["opt_state"]
    return state["vars"], opt_state, list(state["phase_vars"]), history, t


def _raise_nonfinite(m, t, phase, mgr, directory, history, phase_vars):
    bad = [int(i) for i in np.flatnonzero(~np.asarray(m["finite"]))]
    terms = {k: float(np.asarray(m[k])[bad[0]]) for k in ("loss",) + LOSS_TERMS}
    where = "the loss" if not np.isfinite(terms["loss"]) else "the updated variables"
    kept = "no checkpoint was written yet"
    if mgr is not None:
        mgr.wait_until_finished()
        last = mgr.latest_step()
        if last is not None:
            kept = f"the last good checkpoint (iteration {last}) is kept in {directory}"
    err = NonFiniteLossError(
        f"{where} became NaN/inf at iteration {t + 1} (phase {phase.name}, image(s) {bad}; terms {terms}); "
        f"stopping. Lower the learning rate (w_lr={phase.w_lr}, noise_lr={phase.noise_lr}) or check the "
        f"target and masks; {kept}.")
    err.history = {k: v[:t] for k, v in history.items()}  # the iterations that did finish
    err.phase_vars = list(phase_vars)  # results of the phases that did finish
    err.images = bad
    raise err


def history_to_json(history: dict) -> dict:
    """History arrays -> JSON-ready lists (per iteration, per image)."""
    return {k: np.asarray(v).tolist() for k, v in history.items()}
