"""The paper's editing applications, each a library function over the engine (paper settings as defaults):

    crossover(G, x, y, mask, vgg=vgg)                  Alg. 3: region M from x, the rest from y
    inpaint(G, image, hole, vgg=vgg)                   Alg. 4: K fillings of a hole, known pixels kept
    scribble(G, original, scribbled, vgg=vgg)          Alg. 5: local edits from user scribbles
    style_transfer(G, content, style, mask, vgg=vgg)   Alg. 6: the style of I2 inside region M of I1
    feature_transfer(G, a, b, mask, vgg=vgg)           I_att: activation tensors combined at a layer

Each returns an `AppResult` (images, variables, masks, the engine runs, settings, seconds).
"""

from i2spp_jax.apps.common import AppResult, RunOptions, reconstruct
from i2spp_jax.apps.crossover import crossover
from i2spp_jax.apps.feature_transfer import combine, feature_transfer
from i2spp_jax.apps.inpaint import inpaint, mean_latent_fill
from i2spp_jax.apps.scribble import scribble, scribble_mask
from i2spp_jax.apps.style_transfer import style_transfer

__all__ = ["AppResult", "RunOptions", "combine", "crossover", "feature_transfer", "inpaint", "mean_latent_fill",
           "reconstruct", "scribble", "scribble_mask", "style_transfer"]
