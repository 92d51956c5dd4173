"""Attribute-level feature transfer with activation-tensor operations (the paper's I_att).

    result = feature_transfer(G, a, b, mask, vgg=vgg)   # mask [H, W]: 1 = from a, 0 = from b
    result.images["transfer"]

Both images are embedded (Algorithm 2's W+ phase, with its starting noise, unless embeddings are
given); G runs for b up to the
activation point of the paper's 4th layer (mapped to G by `layers.activation_point`), and for a
with that tensor replaced by M ⊙ A + (1 − M) ⊙ B (features and, on a StyleGAN2, the RGB skip
image, `activations.spatial_copy`); the layers after it use a's W+, and noise maps combined with the
same mask (a noise map is a per-pixel input: where the features come from b, so does its noise). The other
operations take another M in the mask's place, and keep a's noise and W+:

    feature_transfer(G, a, b, 0.3, vgg=vgg, op="average")     # λ·A + (1 − λ)·B, λ a scalar or [B]
    feature_transfer(G, a, b, bits, vgg=vgg, op="channel")    # bits [C]: channel c from a where 1, b where 0

where C is the channel count of the tensor at the point (`channel_count`).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from i2spp_jax import activations
from i2spp_jax import layers as layer_map
from i2spp_jax.apps.common import AppResult, RunOptions, Timer, batch_of, mask_of, reconstruct_w, render

OPS = {"spatial": activations.spatial_copy, "average": activations.average, "channel": activations.channel_copy}


def later_noise(G, point: str) -> list[bool]:
    """Which noise maps (synthesis order) enter after activation point `point`."""
    last = G.config.last_noise_of(point)
    return [i > last for i in range(len(G.noise_names))]


def channel_count(G, point: str) -> int:
    """C of the features at activation point `point` (traced for shapes alone: nothing is computed)."""
    if point not in G.config.activation_names:
        raise ValueError(f"activation point {point!r}: use one of {G.config.activation_names}")
    ws = jax.ShapeDtypeStruct((1, G.num_ws, G.w_dim), jnp.float32)
    _, acts = jax.eval_shape(lambda w: G.synthesis(w, return_activations=True), ws)
    return activations.capture(acts, point)["x"].shape[-1]


def checked_operand(op: str, value, *, point: str, channels: int, batch: int) -> np.ndarray:
    """M of op "average" or "channel", checked: λ [] or [B] in [0, 1]; bits [C] or [B, C] in [0, 1].

    Args:
      channels: C, the channel count at `point` (named in the message when the bits do not fit).
      batch: B, the number of image pairs.
    Returns:
      float32 numpy, as given.
    """
    m = np.asarray(value, np.float32)
    if op == "average":
        if m.shape not in ((), (batch,)):
            raise ValueError(f"λ of op='average' has shape {m.shape}; expected a scalar or [{batch}] in [0, 1]")
        what = "λ of op='average'"
    elif op == "channel":
        if m.shape not in ((channels,), (batch, channels)):
            raise ValueError(f"the channel bits of op='channel' have shape {m.shape}; the tensor at {point!r} has "
                             f"C = {channels} channels: give [{channels}] or [{batch}, {channels}] (1 = from a)")
        what = "the channel bits of op='channel'"
    else:
        raise ValueError(f"op {op!r} has no λ or channel bits: use 'average' or 'channel'")
    if not (np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1):
        raise ValueError(f"{what} must lie in [0, 1] (1 = from a)")
    return m


def carries_skip(G, point: str) -> bool:
    """Whether the tensor at `point` comes with an RGB skip image (`activations.capture`): on a StyleGAN2
    past the 4x4 block, or at a b{R}.img point; never on a StyleGAN (v1), which has none."""
    if G.generation != 2:
        return False
    block, _, where = point.partition(".")
    return where == "img" or int(block[1:]) > 4


def combine(G, vars_a: dict, vars_b: dict, mask, *, point: str, op: str = "spatial",
            mix_noise: bool = True, carry_skip: bool = True) -> np.ndarray:
    """I_att on embedded images: batched vars of a and b -> [B, H, W, C] in [-1, 1].

    For a spatial copy the noise maps that enter after the point are combined with the same mask
    (resized to each map by the area average): a noise map is a per-pixel input, so where the
    features come from b, so does its noise (`mix_noise=False` keeps a's everywhere). W+ after the
    point is a's. `carry_skip=False` combines the features alone and leaves the RGB skip image a's
    (a comparison: what the paper's recipe does on a StyleGAN2 if the skip image is forgotten).

    `mask` is spatial [H, W] / [B, H, W] in [0, 1] (1 = from a); for op="average" λ, a scalar or [B];
    for op="channel" bits [C] or [B, C] (`checked_operand`).
    """
    if op not in OPS:
        raise ValueError(f"op {op!r}: use one of {sorted(OPS)}")
    if point not in G.config.activation_names:
        raise ValueError(f"activation point {point!r}: use one of {G.config.activation_names}")
    # modulated activations, as the engine renders (`render` below): the grouped convolution with one group
    # per image is the form that exhausted memory for a batch at 1024 (driver.bf16_floor_db, issue 9)
    _, acts_b = G.synthesis(vars_b["w_plus"], noise=list(vars_b["noise"]), return_activations=True,
                            fused_modconv=False)
    other = activations.capture(acts_b, point)
    B = np.shape(vars_a["w_plus"])[0]
    if op != "spatial":
        mask = checked_operand(op, mask, point=point, channels=other["x"].shape[-1], batch=B)
    m = jnp.asarray(mask, jnp.float32)
    batched_ndim = {"spatial": 3, "average": 1, "channel": 2}[op]
    if m.ndim < batched_ndim:
        m = jnp.broadcast_to(m, (B,) + m.shape)
    noise = list(vars_a["noise"])
    if op == "spatial" and mix_noise:
        later = later_noise(G, point)
        noise = [activations._mix(na, nb, activations._resize_map(m, na.shape[1:3])[..., 0]) if lt else na
                 for na, nb, lt in zip(vars_a["noise"], vars_b["noise"], later)]
    edit = OPS[op](m, other)
    if not carry_skip:  # the features alone: their tensor from B with no skip image to mix
        other = {"x": other["x"], "img": None}
        if point.endswith(".img"):  # the block output's features are the tensor at b{R}.x
            point = point.replace(".img", ".x")
            other = {"x": acts_b[point], "img": None}
        edit = OPS[op](m, other)
    return render(G, {"w_plus": vars_a["w_plus"], "noise": noise}, edits={point: edit})


def feature_transfer(G, a, b, mask, *, vgg, layer: int = layer_map.FEATURE_TRANSFER_LAYER, point: Optional[str] = None,
                     op: str = "spatial", embeddings: Optional[tuple] = None, embed_steps: int = 5000,
                     resize_to: Optional[int] = 256, seed: int = 0, run: RunOptions = RunOptions()) -> AppResult:
    """Combines a and b at one activation tensor.

    Args:
      a, b: [H, W, C] or [B, H, W, C] in [-1, 1].
      mask: spatial [H, W] / [B, H, W] in [0, 1] (1 = from a); for op="average" λ in [0, 1], a scalar
        or [B]; for op="channel" bits [C] or [B, C] (1 = from a), C = `channel_count(G, point)`.
      layer: the paper's layer number (1-based over 18), mapped by layers.activation_point; or
      point: an activation point by name (G.config.activation_names), overriding layer.
      embeddings: (vars_a, vars_b) batched; None = Algorithm 2's W+ phase on both here (one batch,
        embed_steps iterations) with their starting noise: the noise phase's maps hold each image's
        pixels, and continuing a's later layers over b's fitted noise breaks the image (BUILD_NOTES).
    Returns:
      AppResult with images "transfer", "a" and "b" (the embeddings' renders); masks "mask" for
      op="spatial"; settings "lam" (op="average"), or "channels" and "channels_from_a" (op="channel").
    """
    xa, xb = batch_of(a, G, "a"), batch_of(b, G, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a {tuple(xa.shape)} and b {tuple(xb.shape)} differ in shape")
    B = xa.shape[0]
    point = point or layer_map.activation_point(G, layer)
    if op not in OPS:
        raise ValueError(f"op {op!r}: use one of {sorted(OPS)}")
    if point not in G.config.activation_names:  # before the embedding, as the operands below
        raise ValueError(f"activation point {point!r}: use one of {G.config.activation_names}")
    if op == "spatial":
        mask = mask_of(mask, G, "mask", B)
    else:  # before the embedding: a wrong λ or bit count ends here, not after minutes of optimisation
        mask = checked_operand(op, mask, point=point, channels=channel_count(G, point), batch=B)
    timer = Timer()
    runs = {}
    if embeddings is None:
        runs["embed"], v = reconstruct_w(G, jnp.concatenate([xa, xb]), vgg=vgg, w_steps=embed_steps,
                                         resize_to=resize_to, seed=seed, run=run)
        embeddings = (jax.tree.map(lambda t: t[:B], v), jax.tree.map(lambda t: t[B:], v))
    va, vb = embeddings
    out = combine(G, va, vb, mask, point=point, op=op)
    seconds = timer()
    settings = {"point": point, "op": op,
                "layer": f"paper layer {layer} -> {point}" if point == layer_map.activation_point(G, layer)
                else f"point {point} (given)", "embed_steps": embed_steps}
    settings.update(_operand_settings(op, mask))
    return AppResult(images={"transfer": out, "a": render(G, va), "b": render(G, vb)}, vars={},
                     masks={"mask": np.asarray(mask)} if op == "spatial" else {}, runs=runs, settings=settings,
                     seconds=seconds)


def _operand_settings(op: str, m: np.ndarray) -> dict:
    """What a non-spatial M was, for AppResult.settings (JSON-able): λ, or the bits and their count."""
    if op == "average":
        return {"lam": m.tolist()}
    if op == "channel":
        bits = m.astype(np.int64) if np.all((m == 0) | (m == 1)) else m  # whole bits read as 0/1
        return {"channels": bits.tolist(), "channels_from_a": bits.sum(axis=-1).tolist()}
    return {}
