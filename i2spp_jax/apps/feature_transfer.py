"""Attribute-level feature transfer with activation-tensor operations (the paper's I_att).

    result = feature_transfer(G, a, b, mask, vgg=vgg)   # mask [H, W]: 1 = from a, 0 = from b
    result.images["transfer"]

Both images are embedded (Algorithm 2, unless embeddings are given); G runs for b up to the
activation point of the paper's 4th layer (mapped to G by `layers.activation_point`), and for a
with that tensor replaced by M ⊙ A + (1 − M) ⊙ B (features and, on a StyleGAN2, the RGB skip
image, `activations.spatial_copy`); the layers after it use a's W+ and noise. Other operations
(averaging, channel copy) are `op="average"` (mask = λ) and `op="channel"` (mask = [C] bits).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import activations
from i2spp_jax import layers as layer_map
from i2spp_jax.apps.common import AppResult, RunOptions, Timer, batch_of, mask_of, reconstruct, render

OPS = {"spatial": activations.spatial_copy, "average": activations.average, "channel": activations.channel_copy}


def combine(G, vars_a: dict, vars_b: dict, mask, *, point: str, op: str = "spatial") -> np.ndarray:
    """I_att on embedded images: batched vars of a and b -> [B, H, W, C] in [-1, 1]."""
    if op not in OPS:
        raise ValueError(f"op {op!r}: use one of {sorted(OPS)}")
    if point not in G.config.activation_names:
        raise ValueError(f"activation point {point!r}: use one of {G.config.activation_names}")
    _, acts_b = G.synthesis(vars_b["w_plus"], noise=list(vars_b["noise"]), return_activations=True)
    other = activations.capture(acts_b, point)
    B = np.shape(vars_a["w_plus"])[0]
    m = jnp.asarray(mask, jnp.float32)
    m = jnp.broadcast_to(m, (B,) + m.shape) if m.ndim in ((2,) if op == "spatial" else (0,) if op == "average" else (1,)) else m
    edit = OPS[op](m, other)
    return render(G, vars_a, edits={point: edit})


def feature_transfer(G, a, b, mask, *, vgg, layer: int = layer_map.FEATURE_TRANSFER_LAYER, point: Optional[str] = None,
                     op: str = "spatial", embeddings: Optional[tuple] = None, embed_steps: tuple[int, int] = (5000, 3000),
                     resize_to: Optional[int] = 256, seed: int = 0, run: RunOptions = RunOptions()) -> AppResult:
    """Combines a and b at one activation tensor.

    Args:
      a, b: [H, W, C] or [B, H, W, C] in [-1, 1].
      mask: spatial [H, W] / [B, H, W] in [0, 1] (1 = from a); λ for op="average"; [C] for "channel".
      layer: the paper's layer number (1-based over 18), mapped by layers.activation_point; or
      point: an activation point by name (G.config.activation_names), overriding layer.
      embeddings: (vars_a, vars_b) batched; None = Algorithm 2 on both here, one batch.
    Returns:
      AppResult with images "transfer", "a" and "b" (the embeddings' renders); masks "mask".
    """
    xa, xb = batch_of(a, G, "a"), batch_of(b, G, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a {tuple(xa.shape)} and b {tuple(xb.shape)} differ in shape")
    B = xa.shape[0]
    point = point or layer_map.activation_point(G, layer)
    if op == "spatial":
        mask = mask_of(mask, G, "mask")
    timer = Timer()
    runs = {}
    if embeddings is None:
        runs["embed"] = reconstruct(G, jnp.concatenate([xa, xb]), vgg=vgg, w_steps=embed_steps[0],
                                    noise_steps=embed_steps[1], resize_to=resize_to, seed=seed, run=run)
        v = runs["embed"].vars
        embeddings = (jax.tree.map(lambda t: t[:B], v), jax.tree.map(lambda t: t[B:], v))
    va, vb = embeddings
    out = combine(G, va, vb, mask, point=point, op=op)
    seconds = timer()
    return AppResult(images={"transfer": out, "a": render(G, va), "b": render(G, vb)}, vars={},
                     masks={"mask": np.asarray(mask)}, runs=runs,
                     settings={"point": point, "op": op,
                               "layer": f"paper layer {layer} -> {point}" if point == layer_map.activation_point(G, layer)
                               else f"point {point} (given)", "embed_steps": list(embed_steps)},
                     seconds=seconds)
