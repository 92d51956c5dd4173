"""Local edits using scribbles (paper Alg. 5), from the command line.

    # The demo: one of the generator's own images (a hidden latent), scribbled with the colours of an
    # edit the generator can draw (a true answer exists); measured: the changed region against that
    # true edit, how far the result reaches the scribbles' colours, and PSNR away from them.
    python -m experiments.scribble

    # Your image and its scribbled copy (the scribbles = where they differ).
    python -m experiments.scribble --original=face.png --scribbled=face_scribbled.png --generator=ckpt/ffhq

    python -m experiments.scribble --paper     # W+ embedding 5000, edit 1000 + 1000, VGG at 256
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
    flags.DEFINE_integer("w_steps", None, "W_l iterations of the edit (paper: 1000)", lower_bound=0)
    flags.DEFINE_integer("noise_steps", None, "Mk_n iterations of the edit (paper: 1000)", lower_bound=0)
    flags.DEFINE_integer("embed_w_steps", None, "W+ iterations of the original's embedding (paper: 5000)",
                         lower_bound=0)


def settings():
    return {"w_steps": FLAGS.w_steps, "noise_steps": FLAGS.noise_steps, "embed_w_steps": FLAGS.embed_w_steps}


def demo(G, s):
    """A scribble with a true answer: the edit is a change the generator can draw with the scribble
    layers (the original's latent with W+ layers 4-6, mapped, taken from another latent); the
    scribbles are every third row of the pixels that change by more than 0.25, painted in the
    edited image's colours. So the scribbled region has a known target (`truth edited`)."""
    from i2spp_jax import layers

    import jax

    za, zb = (jax.random.normal(jax.random.PRNGKey(k), (1, G.z_dim)) for k in (s["truth_seed"], s["truth_seed"] + 40))
    wa, wb = G.mapping(za), G.mapping(zb)
    bits = layers.w_mask(G, layers.SCRIBBLE_LAYERS).astype(bool)
    w_edit = np.where(bits[None, :, None], np.asarray(wb), np.asarray(wa))
    noise = G.make_noise(jax.random.PRNGKey(s["truth_seed"] + 1))
    orig = np.clip(np.asarray(G.synthesis(wa, noise=noise))[0], -1, 1)
    edited = np.clip(np.asarray(G.synthesis(w_edit, noise=noise))[0], -1, 1)
    changed = np.max(np.abs(edited - orig), axis=-1) > 0.25
    rows = (np.arange(G.img_resolution) % 3 == 0)[:, None]
    strokes = (changed & rows).astype(np.float32)
    scribbled = orig * (1 - strokes[..., None]) + edited * strokes[..., None]
    return edit_cli.Inputs(images={"original": orig, "scribbled": scribbled}, masks={},
                           truth={"edited": edited, "changed": edit_cli.as_image(changed.astype(np.float32))},
                           source=f"the generator's render of a hidden latent (seed {s['truth_seed']}); scribbles "
                                  f"= every third row of the pixels that an edit of W+ layers {layers.describe(G, layers.SCRIBBLE_LAYERS)} "
                                  f"(taken from seed {s['truth_seed'] + 40}) changes, in the edited image's colours")


def call(G, inputs, vgg, s, run):
    return apps.scribble(G, inputs.images["original"], inputs.images["scribbled"], vgg=vgg,
                         w_steps=s["w_steps"], noise_steps=s["noise_steps"],
                         embed_steps=s["embed_w_steps"], resize_to=s["resize_to"],
                         seed=s["seed"], run=run)


def measure(G, inputs, result, vgg, s):
    orig, scr = inputs.images["original"], inputs.images["scribbled"]
    m = np.asarray(result.masks["scribbles"])[0]
    near = np.asarray(mask_ops.dilate(m[..., None], 3))[..., 0]  # the scribbles grown by 3 px
    edited, w_res, emb = (result.images[k][0] for k in ("edited", "w_result", "embedding"))
    inside = m > 0.5
    towards = lambda img: float(1 - np.abs(img - scr)[inside].mean() / np.abs(orig - scr)[inside].mean())  # noqa: E731
    out = {"layers": result.settings["layers"],
           "psnr_away_from_scribbles_vs_original": edit_cli.region_psnr(edited, orig, 1 - near),
           "psnr_away_from_scribbles_after_w_phase": edit_cli.region_psnr(w_res, orig, 1 - near),
           "psnr_w_embedding_vs_original": edit_cli.region_psnr(emb, orig, np.ones_like(m)),
           "edit_reach_inside_scribbles": towards(edited),
           "edit_reach_after_w_phase": towards(w_res),
           "note": "edit_reach = 1 - mean|result - scribbled| / mean|original - scribbled| over the scribbled "
                   "pixels (1 = the scribbles' colours reached exactly, 0 = unchanged)"}
    if not (near < 0.5).any():
        out["note_away"] = ("the scribbles grown by 3 px cover the whole image, so nothing is measured away from "
                            "them (null); scribble a smaller part of the image")
    if "edited" in inputs.truth:  # the demo: the region the true edit changes, against the true edit
        changed = inputs.truth["changed"][..., 0] > 0
        truth = inputs.truth["edited"]
        out.update({"psnr_changed_region_vs_true_edit": edit_cli.region_psnr(edited, truth, changed),
                    "psnr_changed_region_vs_true_edit_after_w_phase": edit_cli.region_psnr(w_res, truth, changed),
                    "psnr_changed_region_original_vs_true_edit": edit_cli.region_psnr(orig, truth, changed)})
    return out


def grid(inputs, result, m):
    truth = [inputs.truth["edited"]] if "edited" in inputs.truth else []
    rows = [[inputs.images["original"], inputs.images["scribbled"],
             edit_cli.as_image(np.asarray(result.masks["scribbles"])[0]), result.images["embedding"][0],
             result.images["w_result"][0], result.images["edited"][0]] + truth]
    titles = [["original", "scribbled (input)", "scribbles (where they differ)",
               f"W+ embedding of the original\n{m['psnr_w_embedding_vs_original']:.1f} dB",
               f"after W+ ({m['layers'].split('->')[1].strip()})\nreach {m['edit_reach_after_w_phase']:.2f}",
               f"edited (after noise)\nreach {m['edit_reach_inside_scribbles']:.2f}, away "
               f"{m['psnr_away_from_scribbles_vs_original']:.1f} dB"] + (
        [f"true edit (hidden); its region:\nedited {m['psnr_changed_region_vs_true_edit']:.1f} dB, "
         f"original {m['psnr_changed_region_original_vs_true_edit']:.1f} dB"] if truth else [])]
    return rows, titles, ["Alg. 5"]


EDIT = edit_cli.Edit(
    name="scribble", doc="Alg. 5, local edits using scribbles",
    presets={"demo": dict(w_steps=300, noise_steps=300, embed_w_steps=600),
             "paper": dict(w_steps=1000, noise_steps=1000, embed_w_steps=5000),
             "smoke": dict(w_steps=3, noise_steps=3, embed_w_steps=3)},
    image_flags=("original", "scribbled"), mask_flags=(), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
