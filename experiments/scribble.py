"""Local edits using scribbles (paper Alg. 5), from the command line.

    # The demo: one of the generator's own images (a hidden latent) with a bright stroke drawn on it;
    # measured: how far the edit reaches the stroke, and PSNR away from it (should stay high).
    python -m experiments.scribble

    # Your image and its scribbled copy (the scribbles = where they differ; or give --mask).
    python -m experiments.scribble --original=face.png --scribbled=face_scribbled.png --generator=ckpt/ffhq

    python -m experiments.scribble --paper     # embedding 5000 + 3000, edit 1000 + 1000, VGG at 256
    python -m experiments.scribble --smoke --out=/tmp/x

Writes grid.png, metrics.json, inputs/, outputs/, ckpt/ (see edit_cli).
"""

import numpy as np
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS


def extra_flags():
    flags.DEFINE_integer("w_steps", None, "W_l iterations of the edit (paper: 1000)")
    flags.DEFINE_integer("noise_steps", None, "Mk_n iterations of the edit (paper: 1000)")
    flags.DEFINE_integer("embed_w_steps", None, "W+ iterations of the original's embedding (paper: 5000)")
    flags.DEFINE_integer("embed_noise_steps", None, "noise iterations of the original's embedding (paper: 3000)")


def settings():
    return {"w_steps": FLAGS.w_steps, "noise_steps": FLAGS.noise_steps, "embed_w_steps": FLAGS.embed_w_steps,
            "embed_noise_steps": FLAGS.embed_noise_steps}


def demo_stroke(resolution: int) -> np.ndarray:
    """A bright diagonal stroke, 2 px wide, across the middle: [R, R] in {0, 1}."""
    r = resolution
    yy, xx = np.mgrid[:r, :r]
    return ((np.abs((yy - r * 0.3) - 0.5 * (xx - r * 0.25)) < 1.0) & (xx > r * 0.25) & (xx < r * 0.75)).astype(np.float32)


def demo(G, s):
    orig = edit_cli.hidden_render(G, s["truth_seed"])
    stroke = demo_stroke(G.img_resolution)
    scribbled = orig * (1 - stroke[..., None]) + stroke[..., None] * 1.0  # painted white
    return edit_cli.Inputs(images={"original": orig, "scribbled": scribbled}, masks={}, truth={},
                           source=f"the generator's render of a hidden latent (seed {s['truth_seed']}) with a white "
                                  "stroke painted on it")


def call(G, inputs, vgg, s, run):
    return apps.scribble(G, inputs.images["original"], inputs.images["scribbled"], vgg=vgg,
                         w_steps=s["w_steps"], noise_steps=s["noise_steps"],
                         embed_steps=(s["embed_w_steps"], s["embed_noise_steps"]), resize_to=s["resize_to"],
                         seed=s["seed"], run=run)


def measure(G, inputs, result, vgg, s):
    orig, scr = inputs.images["original"], inputs.images["scribbled"]
    m = np.asarray(result.masks["scribbles"])[0]
    near = np.asarray(mask_ops.dilate(m[..., None], 3))[..., 0]  # the scribbles grown by 3 px
    edited, w_res, emb = (result.images[k][0] for k in ("edited", "w_result", "embedding"))
    inside = m > 0.5
    towards = lambda img: float(1 - np.abs(img - scr)[inside].mean() / np.abs(orig - scr)[inside].mean())  # noqa: E731
    return {"layers": result.settings["layers"],
            "psnr_away_from_scribbles_vs_original": edit_cli.region_psnr(edited, orig, 1 - near),
            "psnr_away_from_scribbles_after_w_phase": edit_cli.region_psnr(w_res, orig, 1 - near),
            "psnr_embedding_vs_original": edit_cli.region_psnr(emb, orig, np.ones_like(m)),
            "edit_reach_inside_scribbles": towards(edited),
            "edit_reach_after_w_phase": towards(w_res),
            "note": "edit_reach = 1 - mean|result - scribbled| / mean|original - scribbled| over the scribbled "
                    "pixels (1 = the stroke painted exactly, 0 = unchanged)"}


def grid(inputs, result, m):
    rows = [[inputs.images["original"], inputs.images["scribbled"],
             edit_cli.as_image(np.asarray(result.masks["scribbles"])[0]), result.images["embedding"][0],
             result.images["w_result"][0], result.images["edited"][0]]]
    titles = [["original", "scribbled (input)", "scribbles (where they differ)",
               f"embedding of the original\n{m['psnr_embedding_vs_original']:.1f} dB",
               f"after W+ ({m['layers'].split('->')[1].strip()})\nreach {m['edit_reach_after_w_phase']:.2f}",
               f"edited (after noise)\nreach {m['edit_reach_inside_scribbles']:.2f}, away "
               f"{m['psnr_away_from_scribbles_vs_original']:.1f} dB"]]
    return rows, titles, ["Alg. 5"]


EDIT = edit_cli.Edit(
    name="scribble", doc="Alg. 5, local edits using scribbles",
    presets={"demo": dict(w_steps=300, noise_steps=300, embed_w_steps=600, embed_noise_steps=300),
             "paper": dict(w_steps=1000, noise_steps=1000, embed_w_steps=5000, embed_noise_steps=3000),
             "smoke": dict(w_steps=3, noise_steps=3, embed_w_steps=3, embed_noise_steps=3)},
    image_flags=("original", "scribbled"), mask_flags=(), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
