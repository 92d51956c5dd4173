"""i2spp_jax: Image2StyleGAN++ (Abdal, Qin, Wonka, CVPR 2020) in JAX.

    import i2spp_jax
    G = i2spp_jax.load_generator("demo")        # or a converted checkpoint dir, or a .pkl / .pt file
    ws = G.mapping(z, truncation_psi=0.7)        # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise="const")         # [N, H, W, C], about [-1, 1]
"""

from i2spp_jax.generator import Generator, GeneratorConfig, demo_generator, make_noise
from i2spp_jax.checkpoint import load_generator, save_generator

__all__ = [
    "Generator",
    "GeneratorConfig",
    "demo_generator",
    "load_generator",
    "make_noise",
    "save_generator",
]
