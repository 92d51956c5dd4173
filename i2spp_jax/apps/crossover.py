"""Image crossover (paper Alg. 3): one image whose region M comes from x and the rest from y.

    result = crossover(G, x, y, mask, vgg=vgg)    # mask [H, W]: 1 = from x
    result.images["crossover"]                    # [B, H, W, C]

M_blur (the mask blurred) weighs the loss: W_l pulls M_blur to x (MSE and perceptual terms) and
1 − M_blur to y (λ_mse2 = λ_mse1, so both sides count alike), from w̄; then Mk_n with the same
masks and targets. 1000 + 1000 iterations, as in the paper.
"""

from typing import Optional

import numpy as np

from i2spp_jax import embed as engine
from i2spp_jax import masks as mask_ops
from i2spp_jax.apps.common import AppResult, RunOptions, Timer, batch_of, batch_size, mask_of, per_image, render


def crossover(G, x, y, mask, *, vgg, w_steps: int = 1000, noise_steps: int = 1000, mse2: float = 1e-5,
              sigma: Optional[float] = None, resize_to: Optional[int] = 256, seed: int = 0,
              run: RunOptions = RunOptions()) -> AppResult:
    """Crosses x (inside mask) with y (outside).

    Args:
      x, y: [H, W, C] or [B, H, W, C] in [-1, 1] (B pairs at once).
      mask: [H, W] or [B, H, W] in [0, 1], 1 = take from x.
      w_steps, noise_steps: W_l and Mk_n iterations (paper: 1000 + 1000).
      mse2: λ_mse2 (the y side), λ_mse1 stays 1e-5.
      sigma: M_blur's Gaussian (default masks.default_sigma).
    Returns:
      AppResult with images "crossover" and "w_result" [B, H, W, C]; masks "mask", "blur".
    """
    x, y = batch_of(x, G, "x"), batch_of(y, G, "y")
    B = batch_size(x, y, names=("x", "y"))
    mask = mask_of(mask, G, "mask", B)
    blur = np.asarray(mask_ops.m_blur(mask, sigma))
    m = engine.make_masks(G, B, mask_mse=per_image(blur, B), mask_percept=per_image(blur, B))
    phases = (engine.W_l(w_steps, mse2=mse2, resize_to=resize_to),
              engine.Mk_n(noise_steps, mse2=mse2, resize_to=resize_to))
    init = engine.initial_variables(G, B, w_init="w_avg", noise_init="normal", seed=seed)
    timer = Timer()
    res = run.embed("crossover", G, np.broadcast_to(x, (B,) + x.shape[1:]), target_y=np.broadcast_to(y, (B,) + y.shape[1:]),
                    phases=phases, init_vars=init, masks=m, vgg=vgg, seed=seed)
    seconds = timer()
    return AppResult(images={"crossover": render(G, res.vars), "w_result": render(G, res.phase_vars[0])},
                     vars=res.vars, masks={"mask": mask, "blur": blur}, runs={"crossover": res},
                     settings={"w_steps": w_steps, "noise_steps": noise_steps, "mse2": mse2,
                               "phases": [repr(p) for p in phases]}, seconds=seconds)
