"""Attribute-level feature transfer (the paper's I_att), from the command line: G continues from
M ⊙ A + (1 − M) ⊙ B at one activation tensor of two embedded images.

    # The demo: two of the generator's own images (hidden latents), the left half from a at the
    # paper's 4th layer; measured: each region against its source's rendering, and the same copy
    # without the RGB skip image.
    python -m experiments.feature_transfer

    python -m experiments.feature_transfer --a=a.png --b=b.png --mask=half:left --generator=ckpt/ffhq
    python -m experiments.feature_transfer --layer=6          # another paper layer (1..18), mapped to G
    python -m experiments.feature_transfer --point=b16.img    # or an activation point by name
    python -m experiments.feature_transfer --paper | --smoke --out=/tmp/x

Writes grid.png, metrics.json, inputs/, outputs/, ckpt/ (see edit_cli).
"""

import numpy as np
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps, layers
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS
DEMO_MASK = "half:left"


def extra_flags():
    flags.DEFINE_integer("layer", None, "the paper's layer number (1..18; paper: 4), mapped to the generator")
    flags.DEFINE_string("point", None, "an activation point by name (overrides --layer), e.g. b16.img")
    flags.DEFINE_enum("op", None, ["spatial", "average", "channel"], "the operation (paper: spatial copying)")
    flags.DEFINE_float("lam", None, "λ for --op=average")
    flags.DEFINE_integer("embed_w_steps", None, "W+ iterations of the embeddings (paper: 5000)")


def settings():
    return {"layer": FLAGS.layer, "point": FLAGS.point, "op": FLAGS.op, "lam": FLAGS.lam,
            "embed_w_steps": FLAGS.embed_w_steps}


def demo(G, s):
    a, b = edit_cli.hidden_render(G, s["truth_seed"]), edit_cli.hidden_render(G, s["truth_seed"] + 30)
    return edit_cli.Inputs(images={"a": a, "b": b}, masks={"mask": mask_ops.from_spec(DEMO_MASK, G.img_resolution)},
                           latents={"a": edit_cli.hidden_vars(G, s["truth_seed"]),
                                    "b": edit_cli.hidden_vars(G, s["truth_seed"] + 30)},
                           source=f"two renders of the generator from hidden latents (seeds {s['truth_seed']}, "
                                  f"{s['truth_seed'] + 30}); mask {DEMO_MASK} (white = from a)")


def call(G, inputs, vgg, s, run):
    mask = s["lam"] if s["op"] == "average" else inputs.masks["mask"]
    return apps.feature_transfer(G, inputs.images["a"], inputs.images["b"], mask, vgg=vgg, layer=s["layer"],
                                 point=s.get("point"), op=s["op"], embed_steps=s["embed_w_steps"],
                                 resize_to=s["resize_to"], seed=s["seed"], run=run)


def measure(G, inputs, result, vgg, s):
    m = inputs.masks["mask"]
    out, ra, rb = result.images["transfer"][0], result.images["a"][0], result.images["b"][0]
    point = result.settings["point"]
    measured = {"point": result.settings["layer"],
                "psnr_mask_region_vs_a_rendering": edit_cli.region_psnr(out, ra, m),
                "psnr_rest_vs_b_rendering": edit_cli.region_psnr(out, rb, 1 - m),
                "psnr_embedding_a": edit_cli.region_psnr(ra, inputs.images["a"], np.ones_like(m)),
                "psnr_embedding_b": edit_cli.region_psnr(rb, inputs.images["b"], np.ones_like(m))}
    if s["op"] == "spatial":  # the same copy of the features alone, the skip image left as a's
        x_only = apps.combine(G, *_embeddings(result), m, point=point, carry_skip=False)[0]
        measured["features_only_psnr_mask_region_vs_a"] = edit_cli.region_psnr(x_only, ra, m)
        measured["features_only_psnr_rest_vs_b"] = edit_cli.region_psnr(x_only, rb, 1 - m)
        result.images["features_only"] = x_only[None]
    if inputs.latents:  # the demo: the same operation on the hidden true latents (a perfect embedding)
        va, vb = inputs.latents["a"], inputs.latents["b"]
        oracle = apps.combine(G, va, vb, m, point=point, op=s["op"])[0] if s["op"] == "spatial" else None
        if oracle is not None:
            measured["true_latents_psnr_mask_region_vs_a"] = edit_cli.region_psnr(oracle, inputs.images["a"], m)
            measured["true_latents_psnr_rest_vs_b"] = edit_cli.region_psnr(oracle, inputs.images["b"], 1 - m)
            result.images["true_latents"] = oracle[None]
    return measured


def _embeddings(result):
    import jax

    res = result.runs["embed"]
    v = {"w_plus": res.vars["w_plus"], "noise": res.phase_vars[0]["noise"]}
    n = np.shape(v["w_plus"])[0] // 2
    return jax.tree.map(lambda t: t[:n], v), jax.tree.map(lambda t: t[n:], v)


def grid(inputs, result, m):
    row = [inputs.images["a"], inputs.images["b"], edit_cli.as_image(inputs.masks["mask"]), result.images["a"][0],
           result.images["b"][0], result.images["transfer"][0]]
    titles = ["a", "b", "mask (white = from a)", f"a embedded\n{m['psnr_embedding_a']:.1f} dB",
              f"b embedded\n{m['psnr_embedding_b']:.1f} dB",
              f"I_att at {result.settings['point']}\nM {m['psnr_mask_region_vs_a_rendering']:.1f} dB vs a, rest "
              f"{m['psnr_rest_vs_b_rendering']:.1f} vs b"]
    if "features_only" in result.images:
        row.append(result.images["features_only"][0])
        titles.append(f"features only (no skip image)\nM {m['features_only_psnr_mask_region_vs_a']:.1f}, rest "
                      f"{m['features_only_psnr_rest_vs_b']:.1f} dB")
    if "true_latents" in result.images:
        row.append(result.images["true_latents"][0])
        titles.append(f"I_att on the hidden latents\nM {m['true_latents_psnr_mask_region_vs_a']:.1f} dB vs a, rest "
                      f"{m['true_latents_psnr_rest_vs_b']:.1f} vs b")
    return [row], [titles], ["I_att"]


EDIT = edit_cli.Edit(
    name="feature_transfer", doc="I_att, attribute-level feature transfer",
    presets={"demo": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=600),
             "paper": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=5000),
             "smoke": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=3)},
    image_flags=("a", "b"), mask_flags=("mask",), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
