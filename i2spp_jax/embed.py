"""The embedding engine: optimise W+ and noise maps so that G(w, n) matches target images.

    vars = initial_variables(G, batch=2, w_init="w_avg", noise_init="normal", seed=0)
    result = embed(G, target, init_vars=vars, phases=schedule("w_then_noise", 5000, 3000), vgg=vgg)
    result.vars["w_plus"]        # [B, num_ws, w_dim]
    result.phase_vars[0]         # the variables after the W+ phase (the "W+ result")

Everything the optimisation changes lives in one pytree, per image,

    vars = {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]}     # noise in synthesis order

with a leading batch axis B when several images are embedded at once. Two trees say what a phase
may change: a *label* tree (static: which optimiser owns each leaf; "frozen" leaves get
`optax.set_to_zero`) and a *mask* tree (data, per image: the paper's w_m, one bit per W+ layer, and
n_m, one bit or one spatial map per noise map). A masked-out entry is never changed: its gradient is
zeroed before the optimiser, and the new value is selected with `jnp.where`, so it stays
bit-identical however many steps run (optax.masked alone would pass raw gradients through).

The paper's building blocks are `Phase` settings of the one pure `step` function: `W_l`, `Mk_n`,
`M_st`. `step` handles ONE image and is undecorated; `embed` applies `jax.vmap` over images and
`jax.jit` once per phase, with the generator and VGG passed as arguments (never closure constants).
"""

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from i2spp_jax import losses as _losses
from i2spp_jax import metrics as _metrics
from i2spp_jax.generator import Generator

logger = logging.getLogger(__name__)

Vars = dict  # {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]} (leading [B] when batched)
W_INITS = ("w_avg", "uniform", "uniform_0.4")  # w̄, U[-1, 1], U[-0.4, 0.4]; or an array
NOISE_INITS = ("normal", "const")  # N(0, I) from the seed, or the generator's stored maps
LOSS_TERMS = ("mse1", "mse2", "percept", "style")


# ----------------------------------------------------------------------------------------------
# Loss and PSNR (i2spp_jax.losses / metrics).

LossWeights = _losses.LossWeights


def _eq1_loss(vgg, img, x, y, masks, weights, resize_to):
    """Paper Eq. 1 for [N, H, W, C] images in [-1, 1] -> (total [N], unweighted terms {name: [N]})."""
    return _losses.eq1_loss(vgg, img, x, y, mask_mse=masks.get("mse"), mask_percept=masks.get("percept"),
                            mask_style=masks.get("style"), weights=weights, resize_to=resize_to)


def _psnr(a, b):
    """PSNR in dB of [N, H, W, C] images in [-1, 1] (both clipped to [-1, 1]) -> [N]."""
    a, b = jnp.clip(a, -1, 1), jnp.clip(b, -1, 1)
    return _metrics.psnr(a, b, data_range=2.0)


# ----------------------------------------------------------------------------------------------
# Phases: the paper's building blocks as settings of one step function.


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation phase: which variables move, under which loss, with which optimiser."""

    name: str  # shown in logs and history, e.g. "W_l" or "Mk_n"
    num_steps: int  # iterations of this phase
    update_w: bool  # optimise w_plus (layers further restricted by the w_m mask)
    update_noise: bool  # optimise the noise maps (further restricted by the n_m mask)
    weights: Any = dataclasses.field(default_factory=LossWeights)  # λ of Eq. 1 (LossWeights)
    w_lr: float = 0.01  # learning rate for w_plus
    w_optimizer: str = "adam"  # "adam" or "sgd" (the paper's alternative: SGD lr 0.8)
    noise_lr: float = 5.0  # Adam learning rate for the noise maps
    resize_to: Optional[int] = 256  # VGG input resolution (None = the image's own)

    def __post_init__(self):
        if self.num_steps < 0:
            raise ValueError(f"phase {self.name}: num_steps must be >= 0, got {self.num_steps}")
        if self.w_optimizer not in ("adam", "sgd"):
            raise ValueError(f"phase {self.name}: w_optimizer must be 'adam' or 'sgd', got {self.w_optimizer!r}")
        if not (self.update_w or self.update_noise):
            raise ValueError(f"phase {self.name} updates nothing: set update_w and/or update_noise")


def W_l(num_steps: int, *, lr: float = 0.01, optimizer: str = "adam", mse1: float = 1e-5, mse2: float = 0.0,
        percept: float = 1e-5, resize_to: Optional[int] = 256) -> Phase:
    """Masked W+ optimisation (noise fixed): λ_mse1 = λ_p = 1e-5, Adam lr 0.01 (or SGD lr 0.8)."""
    return Phase("W_l", num_steps, update_w=True, update_noise=False,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=mse2, percept=percept),
                 w_lr=lr, w_optimizer=optimizer, resize_to=resize_to)


def Mk_n(num_steps: int, *, lr: float = 5.0, mse1: float = 1e-5, mse2: float = 1e-5,
         resize_to: Optional[int] = 256) -> Phase:
    """Masked noise optimisation (w fixed): λ_mse1 = λ_mse2 = 1e-5, no VGG term, Adam lr 5."""
    return Phase("Mk_n", num_steps, update_w=False, update_noise=True,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=mse2, percept=0.0),
                 noise_lr=lr, resize_to=resize_to)


def M_st(num_steps: int, *, lr: float = 0.01, style: float = 5e-7, content: float = 1e-5,
         resize_to: Optional[int] = 256) -> Phase:
    """Masked style transfer on w: λ_s = 5e-7 (Gram of conv3_3 under M_s against y), plus a content
    term λ_mse1 pulling the region M_m (give M_m = 1 − style region) to x.

    The paper's table gives Adam lr 5 for this block; on w that diverges, so the default is the W_l
    rate 0.01 (pass lr=5.0 to follow the table literally).
    """
    return Phase("M_st", num_steps, update_w=True, update_noise=False,
                 weights=LossWeights(style=style, mse1=content, mse2=0.0, percept=0.0),
                 w_lr=lr, resize_to=resize_to)


def Joint(num_steps: int, *, w_lr: float = 0.01, noise_lr: float = 5.0, mse1: float = 1e-5,
          percept: float = 1e-5, resize_to: Optional[int] = 256) -> Phase:
    """W+ and noise together under the W_l loss (the paper's ablation: worse and edits badly)."""
    return Phase("joint", num_steps, update_w=True, update_noise=True,
                 weights=LossWeights(style=0.0, mse1=mse1, mse2=0.0, percept=percept),
                 w_lr=w_lr, noise_lr=noise_lr, resize_to=resize_to)


SCHEDULES = ("w_then_noise", "joint", "noise_then_w", "w_only")


def schedule(name: str, w_steps: int, noise_steps: int, *, w_lr: float = 0.01, w_optimizer: str = "adam",
             noise_lr: float = 5.0, percept: float = 1e-5, resize_to: Optional[int] = 256) -> tuple[Phase, ...]:
    """The paper's reconstruction schedules (Alg. 2 and its ablation), all over w_steps + noise_steps:

      w_then_noise: W_l for w_steps, then Mk_n for noise_steps (the method).
      joint:        W+ and noise together for w_steps + noise_steps.
      noise_then_w: Mk_n for noise_steps, then W_l for w_steps.
      w_only:       W_l for w_steps + noise_steps (noise stays at its initial maps).
    """
    w = functools.partial(W_l, lr=w_lr, optimizer=w_optimizer, percept=percept, resize_to=resize_to)
    n = functools.partial(Mk_n, lr=noise_lr, resize_to=resize_to)
    if name == "w_then_noise":
        return (w(w_steps), n(noise_steps))
    if name == "joint":
        if w_optimizer != "adam":
            raise ValueError("the joint schedule uses Adam for w")
        return (Joint(w_steps + noise_steps, w_lr=w_lr, noise_lr=noise_lr, percept=percept, resize_to=resize_to),)
    if name == "noise_then_w":
        return (n(noise_steps), w(w_steps))
    if name == "w_only":
        return (w(w_steps + noise_steps),)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


# ----------------------------------------------------------------------------------------------
# Variables, labels and masks.


def initial_variables(G: Generator, batch: Optional[int] = None, *, w_init: Union[str, Any] = "w_avg",
                      noise_init: Union[str, Sequence[Any]] = "normal", seed: int = 0) -> Vars:
    """The starting point of an embedding.

    Args:
      G: the generator.
      batch: number of images (adds a leading [B] axis), or None for one image without it.
      w_init: "w_avg" (the mean latent w̄), "uniform" (U[-1, 1]), "uniform_0.4" (U[-0.4, 0.4]), or a
        given embedding [num_ws, w_dim] / [B, num_ws, w_dim] (e.g. an earlier result).
      noise_init: "normal" (N(0, I)), "const" (the generator's stored maps), or a list of maps.
      seed: every random draw comes from it: image i uses fold_in(PRNGKey(seed), i), then
        fold_in(., 0) for w and fold_in(., 1) for the noise (per layer fold_in inside make_noise).
    """
    n = 1 if batch is None else batch
    keys = [jax.random.fold_in(jax.random.PRNGKey(seed), i) for i in range(n)]
    shape = (G.num_ws, G.w_dim)
    if isinstance(w_init, str):
        if w_init == "w_avg":
            ws = [jnp.broadcast_to(G.w_avg, shape)] * n
        elif w_init in ("uniform", "uniform_0.4"):
            r = 1.0 if w_init == "uniform" else 0.4
            ws = [jax.random.uniform(jax.random.fold_in(k, 0), shape, minval=-r, maxval=r) for k in keys]
        else:
            raise ValueError(f"w_init={w_init!r}: use one of {W_INITS} or an array of shape {shape}")
    else:
        w = jnp.asarray(w_init, jnp.float32)
        if w.shape == shape:
            ws = [w] * n
        elif batch is not None and w.shape == (n,) + shape:
            ws = list(w)
        else:
            raise ValueError(f"w_init has shape {w.shape}; expected {shape}"
                             + (f" or {(n,) + shape}" if batch else ""))
    if isinstance(noise_init, str):
        if noise_init == "normal":
            noises = [G.make_noise(jax.random.fold_in(k, 1)) for k in keys]
        elif noise_init == "const":
            noises = [list(G.noise_const)] * n
        else:
            raise ValueError(f"noise_init={noise_init!r}: use one of {NOISE_INITS} or a list of maps")
    else:
        maps = [jnp.asarray(m, jnp.float32) for m in noise_init]
        if len(maps) != len(G.noise_shapes):
            raise ValueError(f"noise_init has {len(maps)} maps; the generator has {len(G.noise_shapes)}")
        for m, s, name in zip(maps, G.noise_shapes, G.noise_names):
            if m.shape not in (s, (n,) + s):
                raise ValueError(f"noise_init map {name} has shape {m.shape}; expected {s}")
        noises = [[m if m.shape == s else m[i] for m, s in zip(maps, G.noise_shapes)] for i in range(n)]
    per_image = [{"w_plus": jnp.asarray(w, jnp.float32), "noise": [jnp.asarray(m, jnp.float32) for m in nz]}
                 for w, nz in zip(ws, noises)]
    if batch is None:
        return per_image[0]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_image)


def labels(vars: Vars, phase: Phase) -> Vars:
    """The label tree of `phase`: "w" / "noise" for the leaves it optimises, "frozen" elsewhere."""
    out = {"w_plus": "w" if phase.update_w else "frozen",
           "noise": ["noise" if phase.update_noise else "frozen"] * len(vars["noise"])}
    if jax.tree.structure(out) != jax.tree.structure(jax.tree.map(lambda _: "", vars)):
        raise ValueError("every variable leaf must get exactly one label; vars has keys "
                         f"{sorted(vars)} (expected 'w_plus' and 'noise')")
    return out


def make_optimizer(phase: Phase) -> optax.GradientTransformation:
    """optax.partition over the label tree: Adam/SGD for w, Adam for noise, set_to_zero when frozen."""
    w_tx = optax.adam(phase.w_lr) if phase.w_optimizer == "adam" else optax.sgd(phase.w_lr)
    return optax.partition({"w": w_tx, "noise": optax.adam(phase.noise_lr), "frozen": optax.set_to_zero()},
                           functools.partial(labels, phase=phase))


def make_masks(G: Generator, batch: Optional[int] = None, *, w_m=None, n_m=None, mask_mse=None,
               mask_percept=None, mask_style=None) -> dict:
    """Variable and loss masks for `step`, checked against the generator (clear errors on mismatch).

    Args:
      w_m: one bit per W+ layer, [num_ws] (or [B, num_ws]); None = all layers. 1 = optimised.
      n_m: one entry per noise map: a bit, or a spatial [R, R] map (or [B, R, R]); None = all.
      mask_mse, mask_percept, mask_style: spatial loss masks [H, W] / [H, W, 1] / [B, H, W, 1] in
        [0, 1] at the generator's resolution (M_m, M_p, M_s of Eq. 1); None = the whole image.
    Returns:
      {"vars": {"w_plus": [(B,) num_ws, 1], "noise": [[(B,) R|1, R|1], ...]},
       "loss": {"mse": ..., "percept": ..., "style": ... (only those given)}}, float32 in {0, 1}.
    """
    n = 1 if batch is None else batch
    lead = () if batch is None else (n,)

    def per_image(a, shape, what):
        a = np.asarray(a, np.float32)
        if a.shape == shape:
            return np.broadcast_to(a, lead + shape)
        if batch is not None and a.shape == lead + shape:
            return a
        raise ValueError(f"{what} has shape {a.shape}; expected {shape}" + (f" or {lead + shape}" if batch else ""))

    w_bits = np.ones(G.num_ws, np.float32) if w_m is None else w_m
    w_bits = per_image(w_bits, (G.num_ws,), f"w_m (one bit per W+ layer, {G.num_ws} layers)")
    if not np.isin(w_bits, (0.0, 1.0)).all():
        raise ValueError("w_m must be binary (0 = frozen layer, 1 = optimised)")
    if n_m is None:
        n_m = [1.0] * len(G.noise_shapes)
    if len(n_m) != len(G.noise_shapes):
        raise ValueError(f"n_m has {len(n_m)} entries; the generator has {len(G.noise_shapes)} noise maps "
                         f"{G.noise_names}")
    noise = []
    for m, s, name in zip(n_m, G.noise_shapes, G.noise_names):
        a = np.asarray(m, np.float32)
        spatial = a.ndim >= 2
        a = per_image(a, s if spatial else (), f"n_m[{name}] (a bit or an {s} map)")
        if not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(f"n_m[{name}] must be binary")
        noise.append(jnp.asarray(a if spatial else a.reshape(lead + (1, 1))))
    out = {"vars": {"w_plus": jnp.asarray(w_bits)[..., None], "noise": noise}, "loss": {}}
    res, ch = G.img_resolution, 1
    for key, m in (("mse", mask_mse), ("percept", mask_percept), ("style", mask_style)):
        if m is None:
            continue
        a = np.asarray(m, np.float32)
        if a.ndim == 2 or (a.ndim == 3 and batch is not None and a.shape[0] == n and a.shape[-1] != 1):
            a = a[..., None]
        a = per_image(a, (res, res, ch), f"mask_{key} (spatial loss mask at the generator's {res}x{res})")
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"mask_{key} must lie in [0, 1]")
        out["loss"][key] = jnp.asarray(a)
    return out


# ----------------------------------------------------------------------------------------------
# The step.


def render(G: Generator, vars: Vars) -> jax.Array:
    """One image's variables -> [1, H, W, C] image (about [-1, 1])."""
    return G.synthesis(vars["w_plus"][None], noise=[m[None] for m in vars["noise"]])


def step(vars: Vars, opt_state, G: Generator, vgg, target_x: jax.Array, target_y: jax.Array, masks: dict,
         *, phase: Phase):
    """One optimisation step for ONE image (vmap it over images; jit it in the driver).

    Args:
      vars: {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]}.
      opt_state: the state of `make_optimizer(phase)` for these vars.
      G: the generator (a pytree argument, not a constant).
      vgg: VGG-16 pytree for the perceptual/style terms, or None when their λ are 0.
      target_x, target_y: [H, W, C] in [-1, 1], the x and y of Eq. 1.
      masks: from `make_masks` (one image's slice).
      phase: the block's settings (static).
    Returns:
      (new vars, new opt_state, metrics) with metrics {"loss", "mse1", "mse2", "percept", "style",
      "psnr" (of the image at the *input* vars against target_x), "finite" (loss and new vars)}.
    """
    freeze = {"w_plus": not phase.update_w, "noise": not phase.update_noise}

    def loss_fn(v):
        # stop_gradient on frozen groups lets XLA drop their backward pass.
        v = {k: jax.tree.map(jax.lax.stop_gradient, x) if freeze[k] else x for k, x in v.items()}
        img = render(G, v)
        loss_masks = {k: m[None] for k, m in masks["loss"].items()}  # one image's [H, W, 1] -> [1, H, W, 1]
        total, terms = _eq1_loss(vgg, img, target_x[None], target_y[None], loss_masks, phase.weights,
                                 phase.resize_to)
        return total[0], (terms, img)

    (loss, (terms, img)), grads = jax.value_and_grad(loss_fn, has_aux=True)(vars)
    vmask = masks["vars"]
    grads = jax.tree.map(lambda g, m: g * m, grads, vmask)
    updates, opt_state = make_optimizer(phase).update(grads, opt_state, vars)
    new = optax.apply_updates(vars, updates)
    # Select, not add: a masked-out entry keeps its exact bits (x + 0.0 would turn -0.0 into +0.0).
    new = jax.tree.map(lambda n, o, m: jnp.where(m > 0, n, o), new, vars, vmask)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new)]))
    metrics = {"loss": loss, **{k: terms[k][0] for k in LOSS_TERMS}, "psnr": _psnr(img, target_x[None])[0],
               "finite": finite}
    return new, opt_state, metrics


def evaluate(vars: Vars, G: Generator, target_x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Batched vars -> (images [B, H, W, C], PSNR [B] against target_x [B, H, W, C] in [-1, 1])."""
    img = jax.vmap(lambda v: render(G, v)[0])(vars)
    return img, _psnr(img, target_x)


def _compiled_step(phase: Phase):
    """The jitted, vmapped step of `phase`, one per phase setting for the life of the process, so
    that every embed() call with the same settings and shapes reuses one compiled program (the
    number of iterations and the name do not enter the step, so they do not split the cache)."""
    return _compiled_step_for(dataclasses.replace(phase, num_steps=0, name=""))


@functools.lru_cache(maxsize=None)
def _compiled_step_for(phase: Phase):
    fn = functools.partial(step, phase=phase)
    return jax.jit(jax.vmap(fn, in_axes=(0, 0, None, None, 0, 0, 0)))


# ----------------------------------------------------------------------------------------------
# The driver.

HISTORY_KEYS = ("loss",) + LOSS_TERMS + ("psnr",)


class NonFiniteLossError(FloatingPointError):
    """The loss or the variables became NaN/inf; the last good checkpoint is kept.

    Attributes: history (the finished iterations' history), phase_vars (finished phases' results).
    """


@dataclasses.dataclass
class EmbedResult:
    vars: Vars  # final variables, batched
    phase_vars: list  # the variables at the end of each phase
    history: dict  # {"loss", "mse1", ..., "psnr": [T, B] float32, "phase": [T] int32}; T = iterations
    phases: tuple  # the Phase settings that ran
    seconds: float  # wall time of this call's optimisation (without a resumed run's earlier part)


def _fingerprint(G, phases, vars, seed):
    shapes = [list(np.shape(x)) for x in jax.tree.leaves(vars)]
    return json.dumps({"phases": [repr(p) for p in phases], "shapes": shapes, "seed": seed,
                       "generator": [G.img_resolution, G.num_ws, G.w_dim]})


def _ckpt_manager(directory):
    return ocp.CheckpointManager(os.path.abspath(directory),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _save(mgr, t, state, meta):
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    mgr.save(t, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)))


def _restore(mgr, t, template):
    leaves, treedef = jax.tree.flatten(template)
    abstract = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
    got = mgr.restore(t, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                 meta=ocp.args.JsonRestore()))
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in got.state]), got.meta


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
    want = (batch, G.img_resolution, G.img_resolution, G.img_channels)
    if t.shape != want:
        raise ValueError(f"{name} has shape {t.shape}; expected {want} (NHWC at the generator's resolution)")
    if not np.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return jnp.asarray(t, jnp.float32)


def _format_line(phase_i, phases, s, t, total, m, rate):
    ph = phases[phase_i]
    terms = " ".join(f"{k} {np.mean(m[k]):.4g}" for k in LOSS_TERMS if getattr(ph.weights, k))
    return (f"[{ph.name} {phase_i + 1}/{len(phases)}] it {s}/{ph.num_steps} (total {t}/{total}) | "
            f"loss {np.mean(m['loss']):.4g} | {terms} | PSNR {np.mean(m['psnr']):.2f} dB "
            f"(min {np.min(m['psnr']):.2f}) | {rate:.2f} it/s")


def embed(G: Generator, target_x, *, phases: Sequence[Phase], init_vars: Vars, target_y=None,
          masks: Optional[dict] = None, vgg=None, seed: int = 0, log_every: int = 100,
          log: Callable[[str], None] = logger.info, checkpoint_dir: Optional[str] = None,
          checkpoint_every: int = 0, on_phase_end: Optional[Callable[[int, Vars], None]] = None,
          callback: Optional[Callable[[int, dict], None]] = None) -> EmbedResult:
    """Runs `phases` in order on a batch of images, each with its own target, masks and start.

    Args:
      G: the generator.
      target_x: [B, H, W, C] in [-1, 1], the images to embed (x of Eq. 1).
      phases: e.g. `schedule("w_then_noise", 5000, 3000)` or (W_l(200), Mk_n(1000)).
      init_vars: batched variables from `initial_variables(G, B, ...)`.
      target_y: [B, H, W, C] in [-1, 1], y of Eq. 1 (defaults to target_x).
      masks: from `make_masks(G, B, ...)`; None = no masks.
      vgg: VGG-16 pytree (needed when a phase has λ_p or λ_s > 0).
      seed: recorded in checkpoints (the draws themselves happen in `initial_variables`).
      log_every: a progress line every this many iterations (0 = never).
      log: where progress lines go.
      checkpoint_dir: orbax checkpoints (variables, optimiser state, step, seed, history) go here
        every `checkpoint_every` iterations and at each phase end; a run finding one there resumes
        from the latest and ends bit-identical to an uninterrupted run.
      on_phase_end: called with (phase index, batched vars) when a phase finishes.
      callback: called with (iteration, metrics of that iteration as numpy) after every iteration.
    Raises:
      NonFiniteLossError: the loss or the variables became NaN/inf (the last good checkpoint stays).
    """
    phases = tuple(phases)
    B = _check_vars(G, init_vars)
    target_x = _check_targets(G, target_x, "target_x", B)
    target_y = target_x if target_y is None else _check_targets(G, target_y, "target_y", B)
    masks = make_masks(G, B) if masks is None else masks
    for path, leaf in jax.tree_util.tree_leaves_with_path(masks):
        if np.shape(leaf)[:1] != (B,):
            raise ValueError(f"masks{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; expected a leading "
                             f"batch axis of {B} (build them with make_masks(G, {B}, ...))")
    if any(p.weights.percept or p.weights.style for p in phases) and vgg is None:
        raise ValueError("a phase uses the perceptual or style term (λ_p / λ_s > 0) but no vgg was given")
    total = sum(p.num_steps for p in phases)
    starts = np.cumsum([0] + [p.num_steps for p in phases])

    vars = jax.tree.map(jnp.asarray, init_vars)
    history = {k: np.full((total, B), np.nan, np.float32) for k in HISTORY_KEYS}
    history["phase"] = np.repeat(np.arange(len(phases), dtype=np.int32), [p.num_steps for p in phases])
    phase_vars = []
    t = 0  # iterations done
    opt_state = None

    mgr = None
    fingerprint = _fingerprint(G, phases, vars, seed)
    if checkpoint_dir:
        mgr = _ckpt_manager(checkpoint_dir)
        latest = mgr.latest_step()
        if latest is not None:
            vars, opt_state, phase_vars, history, t = _resume(mgr, latest, phases, starts, vars, history,
                                                             fingerprint, checkpoint_dir)
            log(f"resumed from {checkpoint_dir} at iteration {t}/{total}")

    def save(t_now, pi):
        if mgr is None:
            return
        state = {"vars": vars, "opt_state": opt_state, "phase_vars": phase_vars,
                 "history": {k: history[k] for k in HISTORY_KEYS}}
        _save(mgr, t_now, state, {"step": int(t_now), "phase": int(pi), "seed": seed, "fingerprint": fingerprint})

    t_start = time.perf_counter()
    try:
        for pi, phase in enumerate(phases):
            if t >= starts[pi + 1] and len(phase_vars) > pi:
                continue  # finished before a resume
            if opt_state is None or t == starts[pi]:
                opt_state = jax.vmap(make_optimizer(phase).init)(vars)
            fn = _compiled_step(phase)
            tick, tick_t = time.perf_counter(), t
            while t < starts[pi + 1]:
                new_vars, new_opt, m = fn(vars, opt_state, G, vgg, target_x, target_y, masks)
                m = jax.device_get(m)
                if not np.all(m["finite"]):
                    _raise_nonfinite(m, t, phase, mgr, checkpoint_dir, history, phase_vars)
                vars, opt_state = new_vars, new_opt
                for k in HISTORY_KEYS:
                    history[k][t] = m[k]
                t += 1
                s = t - starts[pi]
                if s == 1:  # leave compilation out of the rate
                    tick, tick_t = time.perf_counter(), t
                if log_every and (s % log_every == 0 or s == phase.num_steps):
                    now = time.perf_counter()
                    rate = (t - tick_t) / (now - tick) if t > tick_t else float("nan")
                    log(_format_line(pi, phases, s, t, total, m, rate))
                    tick, tick_t = now, t
                if s == phase.num_steps:
                    phase_vars.append(vars)
                    save(t, pi)
                    if on_phase_end is not None:
                        on_phase_end(pi, vars)
                elif checkpoint_every and t % checkpoint_every == 0:
                    save(t, pi)
                if callback is not None:
                    callback(t, m)
            if phase.num_steps == 0:
                phase_vars.append(vars)
                if on_phase_end is not None:
                    on_phase_end(pi, vars)
            opt_state = None
    finally:
        if mgr is not None:
            mgr.wait_until_finished()
            mgr.close()
    return EmbedResult(vars=vars, phase_vars=phase_vars, history=history, phases=phases,
                       seconds=time.perf_counter() - t_start)


def _resume(mgr, latest, phases, starts, vars, history, fingerprint, directory):
    meta = mgr.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(f"the checkpoint in {directory} belongs to a different run (other phases, shapes, "
                         f"seed or generator); use a new checkpoint directory or delete it.\n"
                         f" checkpoint: {meta.get('fingerprint')}\n this run:   {fingerprint}")
    t = int(meta["step"])
    pi = int(meta["phase"])
    done = sum(1 for s in starts[1:] if s <= t)  # phases finished at t
    template = {"vars": vars, "opt_state": jax.vmap(make_optimizer(phases[pi]).init)(vars),
                "phase_vars": [vars] * done, "history": {k: history[k] for k in HISTORY_KEYS}}
    state, _ = _restore(mgr, latest, template)
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
    raise err


def history_to_json(history: dict) -> dict:
    """History arrays -> JSON-ready lists (per iteration, per image)."""
    return {k: np.asarray(v).tolist() for k, v in history.items()}
