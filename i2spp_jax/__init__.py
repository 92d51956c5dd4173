"""i2spp_jax: Image2StyleGAN++ (Abdal, Qin, Wonka, CVPR 2020) in JAX.

    import i2spp_jax
    G = i2spp_jax.load_generator("demo")        # trained on Fashion-MNIST; or a converted dir, .pkl / .pt
    ws = G.mapping(z, truncation_psi=0.7)        # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise="const")         # [N, H, W, C], about [-1, 1]

    vgg = i2spp_jax.load_vgg16()                 # ImageNet VGG16, converted once, cached
    vars = i2spp_jax.initial_variables(G, batch=1, w_init="w_avg", noise_init="normal", seed=0)
    result = i2spp_jax.embed.embed(G, target, phases=i2spp_jax.schedule("w_then_noise", 5000, 3000),
                                   init_vars=vars, vgg=vgg)   # Algorithm 2: W+ then noise

    hole = i2spp_jax.masks.from_spec("rect:0.25,0.25,0.5,0.5", G.img_resolution)
    filled = i2spp_jax.apps.inpaint(G, image, hole, vgg=vgg)      # Alg. 4; also crossover, scribble,
                                                                # style_transfer, feature_transfer

Modules: generator (StyleGAN2 port), stylegan1 (StyleGAN v1 port, the same face), checkpoint (orbax; the shipped demo generator), vgg, losses
(Eq. 1), metrics (PSNR, SSIM, Fréchet distance), embed (W+/noise optimisation: W_l, Mk_n, M_st; the
engine lives in engine/), activations (I_att's operations as data), masks, layers (the paper's layer
numbers on any generator), apps (the paper's applications), io (images), plots, and for training the
project's own generators: discriminator, training, datasets.
"""

from i2spp_jax.checkpoint import demo_generator, load_generator, save_generator
from i2spp_jax import activations, checkpoint, io, layers, masks  # modules (io: images in and out)
from i2spp_jax import apps  # the paper's applications
from i2spp_jax import embed  # the module: embed.embed is the driver
from i2spp_jax.embed import M_st, Mk_n, W_l, initial_variables, make_masks, schedule
from i2spp_jax.generator import Generator, GeneratorConfig, make_noise, random_demo_generator
from i2spp_jax.stylegan1 import StyleGAN1Config, StyleGAN1Generator
from i2spp_jax.losses import LossWeights, eq1_loss
from i2spp_jax.metrics import psnr, ssim
from i2spp_jax.vgg import VGG16, load_vgg16

__all__ = [
    "Generator",
    "GeneratorConfig",
    "LossWeights",
    "M_st",
    "Mk_n",
    "StyleGAN1Config",
    "StyleGAN1Generator",
    "VGG16",
    "W_l",
    "demo_generator",
    "embed",
    "eq1_loss",
    "initial_variables",
    "load_generator",
    "load_vgg16",
    "make_masks",
    "make_noise",
    "psnr",
    "random_demo_generator",
    "save_generator",
    "schedule",
    "ssim",
]
