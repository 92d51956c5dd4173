"""Local style transfer (paper Alg. 6), from the command line: the style of --style inside region
--mask of --content.

    # The demo: two of the generator's own images (hidden latents), the top half restyled;
    # measured: the masked Gram distance to the style image before and after, PSNR outside the mask.
    python -m experiments.style_transfer

    python -m experiments.style_transfer --content=a.png --style=b.png --mask=half:top --generator=ckpt/ffhq
    python -m experiments.style_transfer --paper    # W+ embedding 5000, M_st 1000 + Mk_n 1000, VGG 256
    python -m experiments.style_transfer --smoke --out=/tmp/x

Writes grid.png, metrics.json, inputs/, outputs/, ckpt/ (see edit_cli).
"""

import jax.numpy as jnp
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps, losses
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS
DEMO_MASK = "half:top"


def extra_flags():
    flags.DEFINE_integer("st_steps", None, "M_st iterations (paper: 1000)", lower_bound=0)
    flags.DEFINE_integer("noise_steps", None, "Mk_n iterations (paper: 1000)", lower_bound=0)
    flags.DEFINE_integer("embed_w_steps", None, "W+ iterations of the content's embedding (paper: 5000)",
                         lower_bound=0)
    flags.DEFINE_float("style_weight", None, "λ_s (paper: 5e-7)", lower_bound=0.0)


def settings():
    return {"st_steps": FLAGS.st_steps, "noise_steps": FLAGS.noise_steps, "embed_w_steps": FLAGS.embed_w_steps,
            "style_weight": FLAGS.style_weight}


def demo(G, s):
    c, st = edit_cli.hidden_render(G, s["truth_seed"]), edit_cli.hidden_render(G, s["truth_seed"] + 20)
    return edit_cli.Inputs(images={"content": c, "style": st},
                           masks={"mask": mask_ops.from_spec(DEMO_MASK, G.img_resolution)},
                           source=f"two renders of the generator from hidden latents (seeds {s['truth_seed']}, "
                                  f"{s['truth_seed'] + 20}); mask {DEMO_MASK}")


def call(G, inputs, vgg, s, run):
    return apps.style_transfer(G, inputs.images["content"], inputs.images["style"], inputs.masks["mask"], vgg=vgg,
                               st_steps=s["st_steps"], noise_steps=s["noise_steps"], style_weight=s["style_weight"],
                               embed_steps=s["embed_w_steps"], resize_to=s["resize_to"],
                               seed=s["seed"], run=run)


def gram_distance(vgg, img, style, mask, resize_to) -> float:
    """The style term itself: Gram of conv3_3 inside `mask` of img vs all of `style`."""
    m = jnp.asarray(mask)[None, :, :, None]
    return float(losses.style_loss(vgg, jnp.asarray(img)[None], jnp.asarray(style)[None], m,
                                   mask_y=jnp.ones_like(m), resize_to=resize_to)[0])


def measure(G, inputs, result, vgg, s):
    c, st, m = inputs.images["content"], inputs.images["style"], inputs.masks["mask"]
    out = result.images["stylized"][0]
    g = lambda img: gram_distance(vgg, img, st, m, s["resize_to"])  # noqa: E731
    return {"gram_distance_in_mask_content": g(c), "gram_distance_in_mask_embedding": g(result.images["embedding"][0]),
            "gram_distance_in_mask_after_m_st": g(result.images["st_result"][0]),
            "gram_distance_in_mask_stylized": g(out),
            "gram_distance_whole_style_vs_itself_top_half": g(st),
            "psnr_outside_mask_vs_content": edit_cli.region_psnr(out, c, 1 - m),
            "psnr_outside_mask_embedding_vs_content": edit_cli.region_psnr(result.images["embedding"][0], c, 1 - m),
            "note": "gram distance = the style loss (VGG16 conv3_3 Gram inside the mask vs all of the style "
                    "image, normalised by area; unweighted)"}


def grid(inputs, result, m):
    rows = [[inputs.images["content"], inputs.images["style"], edit_cli.as_image(inputs.masks["mask"]),
             result.images["embedding"][0], result.images["st_result"][0], result.images["stylized"][0]]]
    titles = [["content I1", "style I2", "mask (white = restyle)",
               f"W+ embedding of I1\nGram {m['gram_distance_in_mask_embedding']:.3g}",
               f"after M_st\nGram {m['gram_distance_in_mask_after_m_st']:.3g}",
               f"stylised (after noise)\nGram {m['gram_distance_in_mask_stylized']:.3g}, "
               f"outside {m['psnr_outside_mask_vs_content']:.1f} dB"]]
    return rows, titles, ["Alg. 6"]


EDIT = edit_cli.Edit(
    name="style_transfer", doc="Alg. 6, local style transfer",
    presets={"demo": dict(st_steps=300, noise_steps=300, embed_w_steps=600, style_weight=5e-7),
             "paper": dict(st_steps=1000, noise_steps=1000, embed_w_steps=5000,
                           style_weight=5e-7),
             "smoke": dict(st_steps=3, noise_steps=3, embed_w_steps=3, style_weight=5e-7)},
    image_flags=("content", "style"), mask_flags=("mask",), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
