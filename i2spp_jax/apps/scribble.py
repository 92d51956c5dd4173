"""Local edits using scribbles (paper Alg. 5).

    result = scribble(G, original, scribbled, vgg=vgg)   # the scribble mask = where they differ
    result.images["edited"]                              # [B, H, W, C]

Starting from the W+ embedding of the original (Algorithm 2's W+ phase, with its starting noise;
run here unless `embedding` is given),
W_l fits the scribbled image with only the paper's layers 4-6 free (mapped to G by
`layers.w_mask`), so the edit comes out as the generator would draw it, not as paint; then Mk_n
restores the original's detail away from the scribbles (M_m = 1 − M_blur+(scribbles), x = the
original) while λ_mse2 holds the scribbled region to the W+ result's render (y = "previous").
1000 + 1000 iterations, as in the paper.
"""

from typing import Iterable, Optional

import numpy as np

from i2spp_jax import embed as engine
from i2spp_jax import layers as layer_map
from i2spp_jax import masks as mask_ops
from i2spp_jax.apps.common import (AppResult, RunOptions, Timer, batch_of, mask_of, per_image, reconstruct_w,
                                   render)

SCRIBBLE_THRESHOLD = 0.1  # a pixel is scribbled when its largest channel difference exceeds this ([-1, 1] scale)


def scribble_mask(original, scribbled) -> np.ndarray:
    """Where the scribbled image differs from the original: [B, H, W] in {0, 1}."""
    d = np.max(np.abs(np.asarray(scribbled, np.float32) - np.asarray(original, np.float32)), axis=-1)
    return (d > SCRIBBLE_THRESHOLD).astype(np.float32)


def scribble(G, original, scribbled, *, vgg, mask=None, embedding: Optional[dict] = None, w_steps: int = 1000,
             noise_steps: int = 1000, layers: Iterable[int] = layer_map.SCRIBBLE_LAYERS, mse2: float = 1e-5,
             embed_steps: int = 5000, dilate_px: Optional[int] = None,
             sigma: Optional[float] = None, resize_to: Optional[int] = 256, seed: int = 0,
             run: RunOptions = RunOptions()) -> AppResult:
    """Edits `original` as the scribbles in `scribbled` ask.

    Args:
      original, scribbled: [H, W, C] or [B, H, W, C] in [-1, 1].
      mask: the scribbles [H, W] / [B, H, W] in {0, 1}; None = where the two images differ.
      embedding: where the edit starts, {"w_plus", "noise"} batched; None = Algorithm 2's W+ phase
        here (embed_steps iterations from w̄) with its starting noise n_ini (common.reconstruct_w).
      layers: the paper's layers W_l updates (1-based over 18).
    Returns:
      AppResult with images "edited", "w_result" (after W_l), "embedding" (the original's);
      masks "scribbles", "outside" (1 − M_blur+, Mk_n's loss mask).
    """
    orig, scr = batch_of(original, G, "original"), batch_of(scribbled, G, "scribbled")
    if orig.shape != scr.shape:
        raise ValueError(f"original {tuple(orig.shape)} and scribbled {tuple(scr.shape)} differ in shape")
    B = orig.shape[0]
    m = scribble_mask(orig, scr) if mask is None else per_image(mask_of(mask, G, "mask", B), B)
    if not m.reshape(B, -1).max(axis=1).all():
        raise ValueError("an image has no scribbles: the scribbled image equals the original there")
    outside = 1.0 - np.asarray(mask_ops.m_blur_plus(m[..., None], dilate_px, sigma))[..., 0]
    timer = Timer()
    runs = {}
    if embedding is None:
        runs["embed"], embedding = reconstruct_w(G, orig, vgg=vgg, w_steps=embed_steps, resize_to=resize_to,
                                                 seed=seed, run=run)
    w_m = layer_map.w_mask(G, layers)
    # W_l fits x = the scribbled image; Mk_n fits x = target_y = the original outside the scribbles.
    phases = (engine.W_l(w_steps, masks="scribble", resize_to=resize_to),
              engine.Mk_n(noise_steps, mse2=mse2, masks="outside", x="y", y="previous", resize_to=resize_to))
    masks = {"scribble": engine.make_masks(G, 1, w_m=w_m),
             "outside": engine.make_masks(G, B, mask_mse=outside)}
    runs["edit"] = run.embed("edit", G, scr, target_y=orig, phases=phases, init_vars=embedding, masks=masks,
                             vgg=vgg, seed=seed)
    seconds = timer()
    final = runs["edit"].vars
    return AppResult(images={"edited": render(G, final), "w_result": render(G, runs["edit"].phase_vars[0]),
                             "embedding": render(G, embedding)},
                     vars=final, masks={"scribbles": m, "outside": outside}, runs=runs,
                     settings={"layers": layer_map.describe(G, layers), "w_m": w_m.tolist(), "w_steps": w_steps,
                               "noise_steps": noise_steps, "mse2": mse2, "embed_steps": embed_steps,
                               "phases": [repr(p) for p in phases]},
                     seconds=seconds)
