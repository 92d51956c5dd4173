"""Image inpainting with diverse fillings (paper Alg. 4).

    result = inpaint(G, damaged, hole, vgg=vgg)          # hole [H, W]: 1 = missing
    result.images["composite"]                           # [K, H, W, C]: K fillings, known pixels put back

The loss ignores the missing region and a rim around it (M_blur+: the hole dilated, then blurred);
only the paper's layers 1-9 and 17-18 are optimised (10-16 stay at w_ini, mapped to the generator
by `layers.w_mask`); W_l from w_ini for 200 iterations, then Mk_n for 1000 against the known pixels,
with λ_mse2 = 1e-4 holding the hole to the render of the W+ result (y = "previous": without a y
term the noise would be free there). Filling 0 starts from w̄, fillings 1..K-1 from w_ini ~
U[-0.4, 0.4] (each its own draw), all in one vmapped batch; the known pixels are composited back. The hole is set to mid-grey before anything sees it (the VGG
features near the hole would otherwise see its content through their receptive fields).
"""

from typing import Iterable, Optional

import jax.numpy as jnp
import numpy as np

from i2spp_jax import embed as engine
from i2spp_jax import layers as layer_map
from i2spp_jax import masks as mask_ops
from i2spp_jax.apps.common import AppResult, RunOptions, Timer, batch_of, mask_of, render


def inpaint(G, image, hole, *, vgg, num_fillings: int = 4, w_steps: int = 200, noise_steps: int = 1000,
            layers: Iterable[int] = layer_map.INPAINT_LAYERS, mse2: float = 1e-4, dilate_px: Optional[int] = None,
            sigma: Optional[float] = None, resize_to: Optional[int] = 256, seed: int = 0,
            run: RunOptions = RunOptions()) -> AppResult:
    """Fills the hole of `image` in `num_fillings` ways.

    Args:
      G: the generator.
      image: [H, W, C] in [-1, 1], the damaged image (what is inside the hole does not matter).
      hole: [H, W] in {0, 1}, 1 = missing.
      vgg: VGG16 for the perceptual term of W_l.
      num_fillings: K; filling 0 starts from w̄, the others from U[-0.4, 0.4].
      w_steps, noise_steps: iterations of W_l and Mk_n (paper: 200, 1000).
      layers: the paper's layer numbers that W_l updates (1-based over 18; mapped to G).
      mse2: λ_mse2 of Mk_n (the hole held to the W+ result's render).
      dilate_px, sigma: M_blur+ (defaults: masks.m_blur_plus's, sigma = resolution / 64, at least 1).
    Returns:
      AppResult with images "filling" (the renders) and "composite" (known pixels put back), each
      [K, H, W, C]; masks "hole" and "known" (1 − M_blur+, the loss mask).
    """
    if int(num_fillings) < 1:
        raise ValueError(f"num_fillings={num_fillings}: give at least 1 (the paper shows 4)")
    x = batch_of(image, G, "image")
    if x.shape[0] != 1:
        raise ValueError("inpaint takes one image (its fillings form the batch)")
    hole = mask_of(hole, G, "hole")
    if hole.ndim != 2:
        raise ValueError("hole must be one [H, W] mask")
    known = 1.0 - np.asarray(mask_ops.m_blur_plus(hole, dilate_px, sigma))
    # The perceptual term compares VGG features, whose receptive fields near the hole reach into it;
    # the hole is set to 0 (mid-grey) first, so that what the damaged image holds there never matters.
    x = x * (1.0 - hole[None, :, :, None])
    K = int(num_fillings)
    w_m = layer_map.w_mask(G, layers)
    loss_masks = engine.make_masks(G, 1, w_m=w_m, mask_mse=known, mask_percept=known)
    noise_masks = engine.make_masks(G, 1, mask_mse=known)
    phases = (engine.W_l(w_steps, masks="known", resize_to=resize_to),
              engine.Mk_n(noise_steps, mse2=mse2, masks="noise", y="previous", resize_to=resize_to))
    init = engine.initial_variables(G, K, w_init=["w_avg"] + ["uniform_0.4"] * (K - 1), seed=seed)
    timer = Timer()
    res = run.embed("inpaint", G, x[0], phases=phases, init_vars=init, vgg=vgg, seed=seed,
                    masks={"known": loss_masks, "noise": noise_masks})
    seconds = timer()
    filling = render(G, res.vars)
    h = hole[None, :, :, None]
    composite = h * filling + (1.0 - h) * np.asarray(batch_of(image, G, "image"))
    return AppResult(images={"filling": filling, "composite": composite, "w_result": render(G, res.phase_vars[0])},
                     vars=res.vars, masks={"hole": hole, "known": known}, runs={"inpaint": res},
                     settings={"layers": layer_map.describe(G, layers), "w_m": w_m.tolist(), "num_fillings": K,
                               "w_steps": w_steps, "noise_steps": noise_steps, "mse2": mse2,
                               "phases": [repr(p) for p in phases]},
                     seconds=seconds)


def mean_latent_fill(G, image, hole) -> np.ndarray:
    """The baseline: G(w̄) (stored noise) inside the hole, the known pixels outside. [1, H, W, C]."""
    x = batch_of(image, G, "image")
    h = mask_of(hole, G, "hole")[None, :, :, None]
    mean = np.clip(np.asarray(G.synthesis(jnp.broadcast_to(G.w_avg, (1, G.num_ws, G.w_dim)))), -1, 1)
    return h * mean + (1.0 - h) * np.asarray(x)
