"""Local style transfer (paper Alg. 6): the style of image I2 inside region M of image I1.

    result = style_transfer(G, content, style, mask, vgg=vgg)   # mask [H, W]: 1 = restyle here
    result.images["stylized"]                                   # [B, H, W, C]

From the W+ embedding of the content image (Algorithm 2's W+ phase with its starting noise; run
here unless given), M_st optimises W+
under the Gram (style) loss of VGG16 conv3_3 with the mask on G's features and all of I2 on the
style side (mask_style_y = 1: "the style of all of I2 inside M"; Gram matrices are normalised by
their mask's area, so a region and a whole image compare), plus a content term (λ_mse1) pulling
1 − M to the content image; then Mk_n restores the content's detail outside M (x = I1) and holds
M to the stylised render (y = "previous", λ_mse2). 1000 + 1000 iterations, as in the paper.
"""

from typing import Optional

import numpy as np

from i2spp_jax import embed as engine
from i2spp_jax.apps.common import (AppResult, RunOptions, Timer, batch_of, batch_size, mask_of, per_image,
                                   reconstruct_w, render)


def style_transfer(G, content, style, mask, *, vgg, embedding: Optional[dict] = None, st_steps: int = 1000,
                   noise_steps: int = 1000, style_weight: float = 5e-7, content_weight: float = 1e-5,
                   lr: float = 0.01, mse2: float = 1e-5, embed_steps: int = 5000,
                   resize_to: Optional[int] = 256, seed: int = 0, run: RunOptions = RunOptions()) -> AppResult:
    """Restyles region `mask` of `content` with the style of all of `style`.

    Args:
      content, style: [H, W, C] or [B, H, W, C] in [-1, 1].
      mask: [H, W] or [B, H, W] in [0, 1], 1 = restyle.
      embedding: where the edit starts, {"w_plus", "noise"} batched; None = Algorithm 2's W+ phase
        here (embed_steps iterations from w̄) with its starting noise n_ini (common.reconstruct_w).
      st_steps, noise_steps: M_st and Mk_n iterations (paper: 1000 + 1000).
      style_weight, content_weight: λ_s and the content term's λ_mse1.
      lr: M_st's Adam rate on W+ (the paper's table says 5; on W+ that diverges, BUILD_NOTES).
    Returns:
      AppResult with images "stylized", "st_result" (after M_st), "embedding"; masks "mask".
    """
    c, s = batch_of(content, G, "content"), batch_of(style, G, "style")
    B = batch_size(c, s, names=("content", "style"))
    c, s = np.broadcast_to(c, (B,) + c.shape[1:]), np.broadcast_to(s, (B,) + s.shape[1:])
    m = per_image(mask_of(mask, G, "mask", B), B)
    timer = Timer()
    runs = {}
    if embedding is None:
        runs["embed"], embedding = reconstruct_w(G, c, vgg=vgg, w_steps=embed_steps, resize_to=resize_to,
                                                 seed=seed, run=run)
    phases = (engine.M_st(st_steps, lr=lr, style=style_weight, content=content_weight, resize_to=resize_to),
              engine.Mk_n(noise_steps, mse2=mse2, y="previous", resize_to=resize_to))
    masks = engine.make_masks(G, B, mask_mse=1.0 - m, mask_style=m, mask_style_y=np.ones_like(m))
    runs["edit"] = run.embed("edit", G, c, target_y=s, phases=phases, init_vars=embedding, masks=masks, vgg=vgg,
                             seed=seed)
    seconds = timer()
    res = runs["edit"]
    return AppResult(images={"stylized": render(G, res.vars), "st_result": render(G, res.phase_vars[0]),
                             "embedding": render(G, embedding)},
                     vars=res.vars, masks={"mask": m}, runs=runs,
                     settings={"st_steps": st_steps, "noise_steps": noise_steps, "style_weight": style_weight,
                               "content_weight": content_weight, "lr": lr, "mse2": mse2,
                               "embed_steps": embed_steps, "phases": [repr(p) for p in phases]},
                     seconds=seconds)
