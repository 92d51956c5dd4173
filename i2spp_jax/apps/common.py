"""What every application shares: its result, Algorithm 2 as a first step, and how runs are driven.

Every application is a function `app(G, images..., masks..., *, vgg, <the paper's settings as
defaults>, **run) -> AppResult` over the engine (`i2spp_jax.embed`); `run` are the driver's
options (checkpoint_dir, checkpoint_every, log, log_every, seed). An application that needs an
embedding first (scribbles, style transfer, feature transfer) runs Algorithm 2 itself unless the
caller passes one, and keeps it in its result, with its own checkpoints under checkpoint_dir/embed.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import embed as engine
from i2spp_jax import io


@dataclasses.dataclass
class AppResult:
    """An application's outputs, the variables behind them, and how it got there."""

    images: dict  # {name: [B, H, W, C] in [-1, 1]}: the outputs (e.g. "composite", "filling")
    vars: dict  # the final variables (batched), or {} for an application with no optimisation
    masks: dict  # {name: [H, W] or [B, H, W] in [0, 1]}: the masks it used (after blurring etc.)
    runs: dict  # {name: EmbedResult} of each embed() call it made ("embed", "edit")
    settings: dict  # what it ran with, including the layer map (layers.describe)
    seconds: float  # wall time of its optimisation (this call's part)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How the engine runs: progress, checkpoints (the driver's arguments)."""

    checkpoint_dir: Optional[str] = None  # sub-folders per embed() call; None = no checkpoints
    checkpoint_every: int = 500  # iterations between checkpoints (phase ends always)
    log: Optional[Callable[[str], None]] = print  # progress lines (None = silent)
    log_every: int = 100  # a progress line every this many iterations (0 = never)

    def embed(self, name: str, G, target, **kw) -> engine.EmbedResult:
        ckpt = None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, name)
        return engine.embed(G, target, log=self.log, log_every=self.log_every, checkpoint_dir=ckpt,
                            checkpoint_every=self.checkpoint_every, **kw)


def batch_of(x, G, what: str) -> jax.Array:
    """[H, W, C] or [B, H, W, C] in [-1, 1] -> [B, H, W, C] float32, checked against G: its shape, and
    that it is a float image in [-1, 1] (an 8-bit or [0, 255] image would be fitted as it is, silently)."""
    io.check_pixels(x, what)
    x = jnp.asarray(x, jnp.float32)
    one = (G.img_resolution, G.img_resolution, G.img_channels)
    if x.shape == one:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != one:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected {one} or [B, *{one}] "
                         "(NHWC in [-1, 1] at the generator's resolution)")
    return x


def batch_size(*images: jax.Array, names: tuple) -> int:
    """The batch of images given as [B, ...] or [1, ...] each (a single one pairs with every other)."""
    B = max(x.shape[0] for x in images)
    if any(x.shape[0] not in (1, B) for x in images):
        sizes = ", ".join(f"{n} {x.shape[0]}" for n, x in zip(names, images))
        raise ValueError(f"batches of {sizes} images: give each the same number of images, or one image")
    return B


def mask_of(m, G, what: str, batch: Optional[int] = None) -> np.ndarray:
    """[H, W] or [B, H, W] (or with a trailing 1) in [0, 1] -> float32 numpy, checked against G (and,
    for a batch of masks, against the `batch` of images)."""
    m = np.asarray(m, np.float32)
    if m.ndim in (3, 4) and m.shape[-1] == 1 and m.shape[-2] == G.img_resolution:
        m = m[..., 0]
    r = G.img_resolution
    if m.shape[-2:] != (r, r) or m.ndim not in (2, 3):
        raise ValueError(f"{what} has shape {m.shape}; expected [{r}, {r}] or [B, {r}, {r}] in [0, 1]")
    if not (np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1):
        raise ValueError(f"{what} must lie in [0, 1]")
    if batch is not None and m.ndim == 3 and m.shape[0] not in (1, batch):
        raise ValueError(f"{what} is a batch of {m.shape[0]} masks for {batch} images; give one mask, or one per image")
    return m


def reconstruct(G, images, *, vgg, w_steps: int = 5000, noise_steps: int = 3000, resize_to: Optional[int] = 256,
                seed: int = 0, run: RunOptions = RunOptions(), name: str = "embed") -> engine.EmbedResult:
    """Algorithm 2 on a batch: W_l from w̄ for w_steps, then Mk_n for noise_steps (the embedding
    that scribbles, style transfer and feature transfer start from)."""
    x = batch_of(images, G, "images")
    init = engine.initial_variables(G, x.shape[0], w_init="w_avg", noise_init="normal", seed=seed)
    return run.embed(name, G, x, phases=engine.schedule("w_then_noise", w_steps, noise_steps, resize_to=resize_to),
                     init_vars=init, vgg=vgg, seed=seed)


def w_embedding(result: engine.EmbedResult, init_vars: dict) -> dict:
    """Algorithm 2's W+ result with the noise maps it started from (n_ini): the latent an edit starts
    from. (The noise phase's maps hold the image's pixels, on a small generator exactly, so an
    edit of W+ starting from them barely shows; the noise phase is run again after the edit.)"""
    return {"w_plus": result.phase_vars[0]["w_plus"], "noise": list(init_vars["noise"])}


def reconstruct_w(G, images, *, vgg, w_steps: int, resize_to, seed: int, run: RunOptions) -> dict:
    """Algorithm 2's W+ phase (w_steps from w̄, noise n_ini ~ N(0, I) fixed): the embedding that
    scribbles and style transfer start from, as {"w_plus", "noise"} batched."""
    x = batch_of(images, G, "images")
    init = engine.initial_variables(G, x.shape[0], w_init="w_avg", noise_init="normal", seed=seed)
    res = run.embed("embed", G, x, phases=(engine.W_l(w_steps, resize_to=resize_to),), init_vars=init, vgg=vgg,
                    seed=seed)
    return res, {"w_plus": res.vars["w_plus"], "noise": list(init["noise"])}


def render(G, vars, edits=None) -> np.ndarray:
    """Batched variables -> [B, H, W, C] images in [-1, 1] (clipped)."""
    imgs, _ = engine.evaluate(vars, G, jnp.zeros((np.shape(vars["w_plus"])[0], G.img_resolution,
                                                  G.img_resolution, G.img_channels)), edits)
    return np.clip(np.asarray(imgs), -1, 1)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def per_image(a: Any, B: int) -> np.ndarray:
    """[...] or [B, ...] -> [B, ...] (a single mask for every image)."""
    a = np.asarray(a, np.float32)
    return a if a.ndim == 3 else np.broadcast_to(a, (B,) + a.shape)
