"""What every generator shows the engine and the applications, whichever StyleGAN it is.

`GeneratorFace` is mixed into the StyleGAN2 `generator.Generator` and the StyleGAN (v1)
`stylegan1.StyleGAN1Generator`. Each is a flax dataclass holding `params` (a pytree) and a static
`config` that names its noise maps (`noise_names`, "b{R}.{layer}", whose params hold a
`noise_const`) and says their shapes; each adds its own `mapping` and `synthesis`.
"""

import hashlib
import weakref
from typing import Optional

import jax
import numpy as np

# digest() of generators whose params are all jax.Arrays (immutable): {leaf ids: (weak refs, digest)}, so
# that a run calling embed() many times (a folder, in chunks) hashes a 1024x1024 generator's 120 MB once.
_DIGESTS: dict = {}


class GeneratorFace:
    """Topology with NVIDIA's names, the mean latent, the stored noise and noise draws."""

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    @property
    def img_resolution(self) -> int:
        return self.config.img_resolution

    @property
    def img_channels(self) -> int:
        return self.config.img_channels

    @property
    def generation(self) -> int:
        """1 for StyleGAN, 2 for StyleGAN2."""
        return self.config.generation

    @property
    def noise_names(self) -> list[str]:
        return self.config.noise_names

    @property
    def noise_shapes(self) -> list[tuple[int, int]]:
        return self.config.noise_shapes

    @property
    def w_avg(self) -> jax.Array:
        """[w_dim] mean latent w̄ (the tracked average of mapping outputs)."""
        return self.params["mapping"]["w_avg"]

    @property
    def noise_const(self) -> list[jax.Array]:
        """The stored noise maps, [R, R] each, synthesis order (not scaled by the noise strengths)."""
        syn = self.params["synthesis"]
        return [syn[b][c]["noise_const"] for b, c in (n.split(".") for n in self.noise_names)]

    def digest(self) -> str:
        """The first 16 hex digits of sha256 over the config and every parameter's float32 bytes: what a
        checkpoint records, so that another generator (same shapes, other weights) never resumes it."""
        leaves = sorted(jax.tree_util.tree_flatten_with_path(self.params)[0], key=lambda t: jax.tree_util.keystr(t[0]))
        key = tuple(id(leaf) for _, leaf in leaves)
        hit = _DIGESTS.get(key)
        if hit is not None and all(ref() is leaf for ref, (_, leaf) in zip(hit[0], leaves)):
            return hit[1]
        h = hashlib.sha256(self.config.to_json().encode())
        for path, leaf in leaves:
            h.update(jax.tree_util.keystr(path).encode())
            h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
        digest = h.hexdigest()[:16]
        if all(isinstance(leaf, jax.Array) for _, leaf in leaves):  # a numpy leaf could change in place
            _DIGESTS.clear()  # one generator at a time is the common case; never a growing cache
            _DIGESTS[key] = ([weakref.ref(leaf) for _, leaf in leaves], digest)
        return digest

    def make_noise(self, key: jax.Array, batch: Optional[int] = None) -> list[jax.Array]:
        """N(0, I) noise maps, one per layer, from an explicit key (fold_in(key, layer index));
        [R, R] maps, or [batch, R, R] when batch is given."""
        return make_noise(self.config.noise_shapes, key, batch)


def make_noise(noise_shapes, key: jax.Array, batch: Optional[int] = None) -> list[jax.Array]:
    lead = () if batch is None else (batch,)
    return [jax.random.normal(jax.random.fold_in(key, i), lead + tuple(shape)) for i, shape in enumerate(noise_shapes)]


def traced(x) -> bool:
    """Whether x is a tracer: the call is inside the caller's jit, grad or vmap (the engine's step), where
    a generator's own jitted synthesis would nest a jit, which only lengthens the trace (grad
    linearises its jaxpr once more; issue 9). False if this JAX's public core no longer names the class
    (then the nested jit runs: the same numbers, a longer trace)."""
    tracer = getattr(jax.core, "Tracer", None)
    return tracer is not None and isinstance(x, tracer)
