"""One optimisation step for ONE image, pure and undecorated, and its compiled, vmapped form.

`step` renders G(w, n) (through the activation edits, if any), evaluates Eq. 1 against the phase's
x and y under its loss masks, zeroes the gradients of masked-out variables, applies the phase's
optimiser and selects the masked-out entries back bit-exactly. `compiled_step(phase)` is
`jax.jit(jax.vmap(step))`, built once per phase setting for the life of the process;
`compiled_steps(phase, k)` runs k such steps in one call (`lax.scan`), keeping the metrics and the
finite check on the device, with the variables and optimiser state donated.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from i2spp_jax import losses as _losses
from i2spp_jax import metrics as _metrics
from i2spp_jax.engine import hoist
from i2spp_jax.engine.phases import Phase
from i2spp_jax.engine.variables import Vars, make_optimizer
from i2spp_jax.generator import Generator

LOSS_TERMS = ("mse1", "mse2", "percept", "style")


def psnr(a, b):
    """PSNR in dB of [N, H, W, C] images in [-1, 1] (both clipped to [-1, 1]) -> [N]."""
    a, b = jnp.clip(a, -1, 1), jnp.clip(b, -1, 1)
    return _metrics.psnr(a, b, data_range=2.0)


def render(G: Generator, vars: Vars, edits: Optional[dict] = None, *, fused_modconv: bool = False,
           dtype: Optional[str] = None) -> jax.Array:
    """One image's variables (and activation edits, `activations.Mix` per point) -> [1, H, W, C]
    image (about [-1, 1]).

    fused_modconv=False (modulated activations around one shared convolution) is the default:
    under the engine's vmap it becomes one batched convolution, where the grouped convolution
    (True) ran 5-10x slower on the CPU (BUILD_NOTES.md, issue 9). Both are the same function.
    """
    return G.synthesis(vars["w_plus"][None], noise=[m[None] for m in vars["noise"]], edits=edits,
                       fused_modconv=fused_modconv, dtype=None if dtype == "float32" else dtype)


def step(vars: Vars, opt_state, G: Generator, vgg, target_x: jax.Array, target_y: jax.Array, masks: dict,
         edits: Optional[dict] = None, target_feats: Optional[dict] = None, *, phase: Phase):
    """One optimisation step for ONE image (vmap it over images; jit it in the driver).

    Args:
      vars: {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]}.
      opt_state: the state of `make_optimizer(phase)` for these vars.
      G: the generator (a pytree argument, not a constant).
      vgg: VGG-16 pytree for the perceptual/style terms, or None when their λ are 0.
      target_x, target_y: [H, W, C] in [-1, 1], the x and y of Eq. 1.
      masks: from `make_masks` (one image's slice).
      edits: activation edits {point: activations.Mix} (one image's slice), or None.
      target_feats: `target_features(...)` of this image's x and y (computed once per phase, so
        that VGG runs on G's image alone), or None to compute them in the step.
      phase: the block's settings (static).
    Returns:
      (new vars, new opt_state, metrics) with metrics {"loss", "mse1", "mse2", "percept", "style",
      "psnr" (of the image at the *input* vars against target_x), "finite" (loss and new vars)}.
    """
    freeze = {"w_plus": not phase.update_w, "noise": not phase.update_noise}
    vgg = _vgg_in(vgg, phase)

    def loss_fn(v):
        # stop_gradient on frozen groups lets XLA drop their backward pass.
        v = {k: jax.tree.map(jax.lax.stop_gradient, x) if freeze[k] else x for k, x in v.items()}
        img = render(G, v, edits, fused_modconv=bool(phase.fused_modconv), dtype=phase.compute_dtype)
        m = {k: mk[None] for k, mk in masks["loss"].items()}  # one image's [H, W, 1] -> [1, H, W, 1]
        total, terms = _losses.eq1_loss(vgg, img, target_x[None], target_y[None], mask_mse=m.get("mse"),
                                        mask_percept=m.get("percept"), mask_style=m.get("style"),
                                        mask_style_y=m.get("style_y"), weights=phase.weights,
                                        resize_to=phase.resize_to,
                                        target_feats=None if target_feats is None else
                                        jax.tree.map(lambda f: f[None], target_feats))
        return total[0], (terms, img)

    (loss, (terms, img)), grads = jax.value_and_grad(loss_fn, has_aux=True)(vars)
    vmask = masks["vars"]
    grads = jax.tree.map(lambda g, m: g * m, grads, vmask)
    updates, opt_state = make_optimizer(phase).update(grads, opt_state, vars)
    new = optax.apply_updates(vars, updates)
    # Select, not add: a masked-out entry keeps its exact bits (x + 0.0 would turn -0.0 into +0.0).
    new = jax.tree.map(lambda n, o, m: jnp.where(m > 0, n, o), new, vars, vmask)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new)]))
    metrics = {"loss": loss, **{k: terms[k][0] for k in LOSS_TERMS}, "psnr": psnr(img, target_x[None])[0],
               "finite": finite}
    return new, opt_state, metrics


def evaluate(vars: Vars, G: Generator, target_x: jax.Array, edits: Optional[dict] = None
             ) -> tuple[jax.Array, jax.Array]:
    """Batched vars (and edits) -> (images [B, H, W, C], PSNR [B] against target_x [B, H, W, C] in [-1, 1])."""
    return _evaluate(vars, G, jnp.asarray(target_x), edits)


@jax.jit
def _evaluate(vars, G, target_x, edits):
    img = jax.vmap(lambda v, e: render(G, v, e)[0])(vars, edits)
    return img, psnr(img, target_x)


def compiled_step(phase: Phase):
    """The jitted, vmapped step of `phase`, one per phase setting for the life of the process, so
    that every embed() call with the same settings and shapes reuses one compiled program (the
    number of iterations and the name do not enter the step, so they do not split the cache)."""
    return _compiled_step_for(_program_key(phase))


def _program_key(phase: Phase) -> Phase:
    """`phase` without the settings that do not enter its programs (length, name, data sources)."""
    return dataclasses.replace(phase, num_steps=0, float32_steps=0, float32_head_steps=0, float32_above_db=None,
                               name="", masks="", y="y", x="x")


@functools.lru_cache(maxsize=None)
def _compiled_step_for(phase: Phase):
    return jax.jit(_batched(phase))


def _batched(phase: Phase):
    fn = functools.partial(step, phase=phase)
    return jax.vmap(fn, in_axes=(0, 0, None, None, 0, 0, 0, 0, 0))


def compiled_init(phase: Phase):
    """The jitted, vmapped `make_optimizer(phase).init`, one per phase setting for the life of the
    process (op by op, optax's init compiled a small program per leaf shape: a first-call cost on a
    GPU, issue 9)."""
    return _compiled_init_for(_program_key(phase))


@functools.lru_cache(maxsize=None)
def _compiled_init_for(phase: Phase):
    return jax.jit(jax.vmap(make_optimizer(phase).init))


def compiled_steps(phase: Phase, k: int):
    """k steps of `phase` in one dispatch: (vars, opt_state, G, vgg, x, y, masks, edits, feats) ->
    (vars, opt_state, metrics with a leading [k] axis).

    The loop runs on the device (`lax.scan`), so the host neither dispatches nor reads back between
    iterations. Once an iteration is not finite (any image), the carry keeps the variables and
    optimiser state from before it, and the remaining iterations change nothing: the caller finds
    the first False in metrics["finite"] and stops there, as the single-step driver does. vars and
    opt_state are donated: the caller must not use the arrays it passed in.
    """
    return _compiled_steps_for(_program_key(phase), k)


@functools.lru_cache(maxsize=None)
def _compiled_steps_for(phase: Phase, k: int):
    one = _batched(phase)

    frozen = {"w_plus": not phase.update_w, "noise": not phase.update_noise}

    def run(vars, opt_state, G, vgg, x, y, masks, edits, feats):
        # The frozen groups never change (the optimiser gives them zero updates): loop invariants, with
        # G, VGG16, the targets and masks, so that their work is done once per dispatch (hoist.py).
        live = {group: v for group, v in vars.items() if not frozen[group]}
        fixed = {group: v for group, v in vars.items() if frozen[group]}

        def body(carry, inv):
            live, opt_state, ok = carry
            fixed, G, vgg, x, y, masks, edits, feats = inv
            vars = {**live, **fixed}
            new_vars, new_opt, m = one(vars, opt_state, G, vgg, x, y, masks, edits, feats)
            new_live = {group: new_vars[group] for group in live}
            ok = ok & jnp.all(m["finite"])
            keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 (frozen after a NaN)
            return (jax.tree.map(keep, new_live, live), jax.tree.map(keep, new_opt, opt_state), ok), m

        (live, opt_state, _), metrics = hoist.invariant_scan(
            body, (live, opt_state, jnp.bool_(True)), (fixed, G, vgg, x, y, masks, edits, feats), k)
        return {**live, **fixed}, opt_state, metrics

    return jax.jit(run, donate_argnums=(0, 1))


def target_features(vgg, target_x: jax.Array, target_y: jax.Array, phase: Phase) -> dict:
    """The VGG features of a phase's fixed targets, [B, ...] per layer (empty without VGG terms)."""
    if not (phase.weights.percept or phase.weights.style):
        return {}
    return _target_features(_vgg_in(vgg, phase), target_x, target_y, phase.weights, phase.resize_to)


def _vgg_in(vgg, phase: Phase):
    """VGG16 computing in the phase's VGG dtype (vgg_dtype, else compute_dtype), for its features of
    G's image and of the targets alike."""
    dtype = phase.vgg_dtype or phase.compute_dtype
    if vgg is None or getattr(vgg, "compute_dtype", dtype) == dtype:
        return vgg
    return vgg.replace(compute_dtype=dtype)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _target_features(vgg, x, y, weights, resize_to):
    return _losses.target_features(vgg, x, y, weights=weights, resize_to=resize_to)
