"""The embedding commands' presets (experiments.reconstruct, experiments.embed_folder): how many
iterations of each phase, and the resolution VGG sees, unless the flags say otherwise."""

from typing import Optional

from i2spp_jax import checkpoint

PRESETS = {
    # name: (w_steps, noise_steps, resize_to (None = the generator's resolution))
    "demo": (600, 600, 64),  # VGG sees the 32x32 demo images upsampled 2x (conv3_3 at 16x16)
    "paper": (5000, 3000, 256),
    "smoke": (10, 10, None),
}


def resolve(preset: Optional[str], generator: str, resolution: int, *, w_steps: Optional[int] = None,
            noise_steps: Optional[int] = None, resize_to: Optional[int] = None) -> tuple[str, int, int, int]:
    """(preset, w_steps, noise_steps, VGG resolution): the preset's values where the flags give None.
    preset None = "demo" for the shipped generators, "paper" for any other."""
    preset = preset or ("demo" if generator in checkpoint.GENERATOR_NAMES else "paper")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    w, n, r = PRESETS[preset]
    w = w if w_steps is None else w_steps
    n = n if noise_steps is None else noise_steps
    r = resize_to if resize_to is not None else (r or resolution)
    return preset, w, n, r
