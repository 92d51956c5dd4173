"""Activation-tensor operations (the paper's I_att) as data: jitted, vmapped and differentiable.

    _, acts_b = G.synthesis(ws_b, noise_b, return_activations=True)
    edit = spatial_copy(mask, capture(acts_b, "b8.img"))       # where mask = 1: keep A; elsewhere: B
    img = G.synthesis(ws_a, noise_a, edits={"b8.img": edit})  # continue from the combined tensor

All three operations of the paper are one formula, A' = M ⊙ A + (1 − M) ⊙ B, with M of a different
shape: a spatial map (spatial copying: M resized to the tensor), a scalar λ (averaging), or one bit
per channel (channel-wise copying). An `Mix` holds M and B's tensors; it is a pytree, so a dict of
them passes through `jax.jit` and `jax.vmap` like any array (one mask and one B per image), and the
result is differentiable in A, B and M.

On a StyleGAN2 ('skip' architecture) the image is the sum of every block's ToRGB output, so a
block's state is two tensors: its features x and the RGB skip image accumulated so far. A Mix
combines both with the same mask (resized to each), so that a copied region takes B's colours from
the coarser blocks too; copying x alone loses them (about 4 dB of the copied region, BUILD_NOTES).
At each activation point the pair is what the block holds there:

    b{R}.conv0  x after the first (up-sampling) conv [R, R, C]; skip image of block R/2 [R/2, R/2, 3]
    b{R}.x      x after the second conv [R, R, C];               skip image of block R/2 (as above)
    b{R}.img    x after the second conv [R, R, C];               skip image including block R [R, R, 3]

so `b{R}.img` is the block's whole output: the usual choice ("the activation tensor of layer l").
"""

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

KINDS = ("spatial", "average", "channel")


def _resize_map(m: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """[..., H, W] mask -> [..., h, w, 1]: the area average when shrinking by a whole factor (each
    tensor pixel gets the share of its footprint inside the mask), bilinear otherwise."""
    (H, W), (h, w) = m.shape[-2:], tuple(hw)
    if (H, W) != (h, w):
        if H % h == 0 and W % w == 0:
            m = m.reshape(m.shape[:-2] + (h, H // h, w, W // w)).mean(axis=(-3, -1))
        else:
            m = jax.image.resize(m, m.shape[:-2] + (h, w), method="linear", antialias=True)
    return m[..., None]


@flax.struct.dataclass
class Mix:
    """A' = M ⊙ A + (1 − M) ⊙ B at one activation point (A = this image's tensors, B = `other`).

    Fields:
      mask: spatial [H, W] (any resolution; resized to each tensor), average [] (λ), or channel [C]
        (1 = take the channel from A), each with an optional leading batch axis [N, ...].
      other: B's tensors at the point, {"x": [(N,) h, w, C], "img": [(N,) h', w', 3] or None}
        (from `capture`).
      kind: "spatial", "average" or "channel" (static).
    """

    mask: jax.Array
    other: dict
    kind: str = flax.struct.field(pytree_node=False, default="spatial")

    def _weights(self, t: jax.Array) -> jax.Array:
        """The mask shaped to broadcast against t [N, h, w, C]."""
        m = jnp.asarray(self.mask, t.dtype)
        if self.kind == "spatial":
            return _resize_map(m, t.shape[1:3])  # [h, w, 1] or [N, h, w, 1]
        if self.kind == "average":
            return m.reshape(m.shape + (1, 1, 1))  # [] -> [1, 1, 1]; [N] -> [N, 1, 1, 1]
        if self.kind == "channel":
            return m.reshape(m.shape[:-1] + (1, 1, m.shape[-1]))
        raise ValueError(f"Mix kind {self.kind!r}: use one of {KINDS}")

    def apply(self, x: jax.Array, img: Optional[jax.Array]) -> tuple[jax.Array, Optional[jax.Array]]:
        """(x [N, h, w, C], skip image [N, h', w', 3] or None) -> the combined pair."""
        x = _mix(x, self.other["x"], self._weights(x))
        b_img = self.other.get("img")
        if img is not None and b_img is not None:
            if self.kind == "channel":
                # Channels of x have no counterpart in RGB: the skip image follows the share of
                # channels taken from A (1 = all from A), so an all-A channel mask changes nothing.
                m = jnp.mean(jnp.asarray(self.mask, img.dtype), axis=-1)
                img = _mix(img, b_img, m.reshape(m.shape + (1, 1, 1)))
            else:
                img = _mix(img, b_img, self._weights(img))
        return x, img


def _mix(a: jax.Array, b: jax.Array, m: jax.Array) -> jax.Array:
    b = jnp.asarray(b, a.dtype)
    if b.ndim == a.ndim - 1:  # one image's tensor inside a per-image (vmapped) synthesis of N = 1
        b = b[None]
    return m * a + (1.0 - m) * b


def capture(acts: dict, point: str) -> dict:
    """B's pair at `point` from `G.synthesis(..., return_activations=True)[1]` (see the module doc).

    Returns {"x": [N, h, w, C], "img": [N, h', w', 3] or None}."""
    block, _, where = point.partition(".")
    if f"{block}.x" not in acts:
        raise ValueError(f"unknown activation point {point!r}; valid: {sorted(acts)}")
    res = int(block[1:])
    if where == "img":
        return {"x": acts[f"{block}.x"], "img": acts[point]}
    if where in ("x", "conv0"):
        return {"x": acts[point], "img": acts.get(f"b{res // 2}.img")}
    raise ValueError(f"unknown activation point {point!r}; valid: {sorted(acts)}")


def spatial_copy(mask: Any, other: dict) -> Mix:
    """M ⊙ A + (1 − M) ⊙ B with M [H, W] in [0, 1] (any size: resized to each tensor; 1 = keep A)."""
    return Mix(mask=jnp.asarray(mask, jnp.float32), other=other, kind="spatial")


def average(lam: Any, other: dict) -> Mix:
    """λ·A + (1 − λ)·B with λ a scalar (or [N])."""
    return Mix(mask=jnp.asarray(lam, jnp.float32), other=other, kind="average")


def channel_copy(channels: Any, other: dict) -> Mix:
    """Channel c from A where channels[c] = 1, from B where 0; channels [C] (or [N, C])."""
    return Mix(mask=jnp.asarray(channels, jnp.float32), other=other, kind="channel")


def is_data_edit(edit: Any) -> bool:
    return isinstance(edit, Mix)
