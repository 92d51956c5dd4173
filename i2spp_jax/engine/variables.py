"""The optimisation's variables and masks: one pytree per image, a label tree, a mask tree.

    vars = {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]}     # noise in synthesis order

with a leading batch axis B when several images are embedded at once. Two trees say what a phase
may change: a *label* tree (static: which optimiser owns each leaf; "frozen" leaves get
`optax.set_to_zero`) and a *mask* tree (data, per image: the paper's w_m, one bit per W+ layer, and
n_m, one bit or one spatial map per noise map). A masked-out entry is never changed: its gradient is
zeroed before the optimiser, and the new value is selected with `jnp.where`, so it stays
bit-identical however many steps run (optax.masked alone would pass raw gradients through).
"""

import functools
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from i2spp_jax.engine.phases import Phase
from i2spp_jax.generator import Generator

Vars = dict  # {"w_plus": [num_ws, w_dim], "noise": [[R, R], ...]} (leading [B] when batched)
W_INITS = ("w_avg", "uniform", "uniform_0.4")  # w̄, U[-1, 1], U[-0.4, 0.4]; or an array
NOISE_INITS = ("normal", "const")  # N(0, I) from the seed, or the generator's stored maps
LOSS_MASKS = ("mse", "percept", "style", "style_y")  # M_m, M_p, M_s on G, M_s on y


def initial_variables(G: Generator, batch: Optional[int] = None, *, w_init: Union[str, Any] = "w_avg",
                      noise_init: Union[str, Sequence[Any]] = "normal", seed: int = 0) -> Vars:
    """The starting point of an embedding.

    Args:
      G: the generator.
      batch: number of images (adds a leading [B] axis), or None for one image without it.
      w_init: "w_avg" (the mean latent w̄), "uniform" (U[-1, 1]), "uniform_0.4" (U[-0.4, 0.4]), or a
        given embedding [num_ws, w_dim] / [B, num_ws, w_dim] (e.g. an earlier result); or a list
        of B such entries, one per image (e.g. ["w_avg", earlier_result]).
      noise_init: "normal" (N(0, I)), "const" (the generator's stored maps), or a list of maps.
      seed: every random draw comes from it: image i uses fold_in(PRNGKey(seed), i), then
        fold_in(., 0) for w and fold_in(., 1) for the noise (per layer fold_in inside make_noise).
    """
    n = 1 if batch is None else batch
    keys = [jax.random.fold_in(jax.random.PRNGKey(seed), i) for i in range(n)]
    shape = (G.num_ws, G.w_dim)
    per_image_inits = isinstance(w_init, (list, tuple)) and len(w_init) == n and batch is not None and (
        any(isinstance(e, str) for e in w_init) or all(np.shape(e) == shape for e in w_init))
    if isinstance(w_init, (list, tuple)) and any(isinstance(e, str) for e in w_init) and not per_image_inits:
        raise ValueError(f"w_init is a list of {len(w_init)} entries; give one per image ({n}), or one string "
                         "for all")
    if per_image_inits:
        ws = [_one_w(G, e, k, shape, f"w_init[{i}]") for i, (e, k) in enumerate(zip(w_init, keys))]
    elif isinstance(w_init, str):
        ws = [_one_w(G, w_init, k, shape, "w_init") for k in keys]
    else:
        w = jnp.asarray(w_init, jnp.float32)
        if w.shape == shape:
            ws = [w] * n
        elif batch is not None and w.shape == (n,) + shape:
            ws = list(w)
        else:
            raise ValueError(f"w_init has shape {w.shape}; expected {shape}"
                             + (f" or {(n,) + shape}, or a list of {n} entries (one per image)" if batch else ""))
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


def _one_w(G: Generator, w_init, key, shape, what) -> jax.Array:
    if isinstance(w_init, str):
        if w_init == "w_avg":
            return jnp.broadcast_to(G.w_avg, shape)
        if w_init in ("uniform", "uniform_0.4"):
            r = 1.0 if w_init == "uniform" else 0.4
            return jax.random.uniform(jax.random.fold_in(key, 0), shape, minval=-r, maxval=r)
        raise ValueError(f"{what}={w_init!r}: use one of {W_INITS} or an array of shape {shape}")
    w = jnp.asarray(w_init, jnp.float32)
    if w.shape != shape:
        raise ValueError(f"{what} has shape {w.shape}; expected {shape}")
    return w


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
               mask_percept=None, mask_style=None, mask_style_y=None) -> dict:
    """Variable and loss masks for `step`, checked against the generator (clear errors on mismatch).

    Args:
      w_m: one bit per W+ layer, [num_ws] (or [B, num_ws]); None = all layers. 1 = optimised.
      n_m: one entry per noise map: a bit, or a spatial [R, R] map (or [B, R, R]); None = all.
      mask_mse, mask_percept, mask_style: spatial loss masks [H, W] / [H, W, 1] / [B, H, W, 1] in
        [0, 1] at the generator's resolution (M_m, M_p, M_s of Eq. 1); None = the whole image.
      mask_style_y: the style term's mask on y (None = mask_style; see losses.eq1_loss).
    Returns:
      {"vars": {"w_plus": [(B,) num_ws, 1], "noise": [[(B,) R|1, R|1], ...]},
       "loss": {"mse": ..., "percept": ..., "style": ..., "style_y": ... (only those given)}},
      float32; a single mask (no batch axis, or batch=1) broadcasts over the batch in `embed`.
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
        noise.append(device_array(a if spatial else a.reshape(lead + (1, 1))))
    out = {"vars": {"w_plus": device_array(np.asarray(w_bits)[..., None]), "noise": noise}, "loss": {}}
    res, ch = G.img_resolution, 1
    for key, m in (("mse", mask_mse), ("percept", mask_percept), ("style", mask_style),
                   ("style_y", mask_style_y)):
        if m is None:
            continue
        a = np.asarray(m, np.float32)
        if a.ndim == 2 or (a.ndim == 3 and batch is not None and a.shape[0] == n and a.shape[-1] != 1):
            a = a[..., None]
        a = per_image(a, (res, res, ch), f"mask_{key} (spatial loss mask at the generator's {res}x{res})")
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"mask_{key} must lie in [0, 1]")
        out["loss"][key] = device_array(a)
    return out


def device_array(a: np.ndarray) -> jax.Array:
    """A float32 host array on the default device as a plain transfer. jnp.asarray of a numpy array
    compiles a small program per shape (jax 0.10: "jit(stage)"), each one more compile in a run's
    first call, which on a GPU is issue 9's compile-time goal."""
    return jax.device_put(np.ascontiguousarray(a, np.float32))
