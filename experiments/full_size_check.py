r"""Renders one image from a randomly initialised FFHQ-sized generator (1024x1024, 18 ws, 17 noise
maps, w 512) with both modulation modes: a check that the port runs at full size on this machine,
and a rough timing.

    python -m experiments.full_size_check
"""

import time

import jax
import jax.numpy as jnp

from i2spp_jax.generator import Generator, GeneratorConfig, init_params


def main():
    config = GeneratorConfig.from_channel_base(img_resolution=1024, z_dim=512, w_dim=512)
    G = Generator(params=init_params(config, jax.random.PRNGKey(0)), config=config)
    ws = G.mapping(jax.random.normal(jax.random.PRNGKey(1), (1, G.z_dim)))
    images = {}
    for fused in (True, False):
        times = []
        for _ in range(2):  # the first call compiles
            t = time.perf_counter()
            images[fused] = G.synthesis(ws, fused_modconv=fused).block_until_ready()
            times.append(time.perf_counter() - t)
        print(f"fused_modconv={fused}: {images[fused].shape}, finite={bool(jnp.isfinite(images[fused]).all())}, "
              f"first call {times[0]:.1f} s, second {times[1]:.2f} s ({jax.devices()[0].platform})")
    print(f"fused vs unfused: max abs diff {float(jnp.abs(images[True] - images[False]).max()):.2e} "
          f"(image std {float(images[True].std()):.2f})")


if __name__ == "__main__":
    main()
