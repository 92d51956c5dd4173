"""Attribute-level feature transfer (the paper's I_att), from the command line: G continues from
M ⊙ A + (1 − M) ⊙ B at one activation tensor of two embedded images.

    # The demo: two of the generator's own images (hidden latents), the left half from a at the
    # paper's 4th layer; measured: each region against its source's rendering, and the same copy
    # without the RGB skip image.
    python -m experiments.feature_transfer

    python -m experiments.feature_transfer --a=a.png --b=b.png --mask=half:left --generator=ckpt/ffhq
    python -m experiments.feature_transfer --layer=6          # another paper layer (1..18), mapped to G
    python -m experiments.feature_transfer --point=b16.img    # or an activation point by name
    python -m experiments.feature_transfer --op=average --lam=0.3              # λ·A + (1 − λ)·B
    python -m experiments.feature_transfer --op=channel --channel_fraction=0.25  # a's first quarter of channels
    python -m experiments.feature_transfer --paper | --smoke --out=/tmp/x

The averaging and the channel copy work on whole tensors: they take no --mask (one given is left
unused, with a line saying so), and their measurements are over the whole image (the transfer
against a's and b's renderings; in the demo, the same operation on the hidden latents).

Writes grid.png, metrics.json, inputs/, outputs/, ckpt/ (see edit_cli).
"""

import dataclasses

import numpy as np
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps, layers
from i2spp_jax import masks as mask_ops
from i2spp_jax.apps.feature_transfer import carries_skip, channel_count

FLAGS = flags.FLAGS
DEMO_MASK = "half:left"
CHANNEL_FRACTION = 0.5  # --op=channel's default share of channels from a


def extra_flags():
    flags.DEFINE_integer("layer", None, "the paper's layer number (1..18; paper: 4), mapped to the generator")
    flags.DEFINE_string("point", None, "an activation point by name (overrides --layer), e.g. b16.img")
    flags.DEFINE_enum("op", None, ["spatial", "average", "channel"],
                      "the operation (paper: spatial copying); average and channel take no --mask (one given is "
                      "unused)")
    flags.DEFINE_float("lam", None, "λ in [0, 1] for --op=average: λ·A + (1 − λ)·B (default 0.5)")
    flags.DEFINE_float("channel_fraction", None, "f in (0, 1] for --op=channel: the first round(f·C) of the C "
                       f"channels at the point from a, the rest from b (default {CHANNEL_FRACTION})")
    flags.DEFINE_integer("embed_w_steps", None, "W+ iterations of the embeddings (paper: 5000)")


def settings():
    # channel_fraction only where it is used, so that the other operations' runs keep their fingerprint
    fraction = FLAGS.channel_fraction
    if fraction is None and FLAGS.op == "channel":
        fraction = CHANNEL_FRACTION
    return {"layer": FLAGS.layer, "point": FLAGS.point, "op": FLAGS.op, "lam": FLAGS.lam,
            "channel_fraction": fraction, "embed_w_steps": FLAGS.embed_w_steps}


def edit_for_flags() -> edit_cli.Edit:
    """EDIT for this command line: --lam and --channel_fraction checked; no --mask for the operations
    on whole tensors (a --mask given to them is left unused, and a line says so)."""
    op = FLAGS.op or EDIT.presets[edit_cli.preset_name()]["op"]
    if FLAGS.lam is not None and not 0 <= FLAGS.lam <= 1:
        raise cli.UserError(f"--lam={FLAGS.lam}: λ must lie in [0, 1] (1 = a's tensor)")
    if FLAGS.channel_fraction is not None and not 0 < FLAGS.channel_fraction <= 1:
        raise cli.UserError(f"--channel_fraction={FLAGS.channel_fraction}: give a share of channels in (0, 1]")
    unused = [f for f, used in (("mask", op == "spatial"), ("lam", op == "average"),
                                ("channel_fraction", op == "channel")) if getattr(FLAGS, f) is not None and not used]
    if unused:
        cli.log(f"--op={op} does not use " + ", ".join(f"--{f}" for f in unused))
    return EDIT if op == "spatial" else dataclasses.replace(EDIT, mask_flags=())


def check(G, s) -> None:
    """--point, else --layer, names an activation point of G (cli.UserError in one line if not)."""
    names = G.config.activation_names
    if s.get("point"):
        if s["point"] not in names:
            raise cli.UserError(f"--point={s['point']}: not an activation point of this generator; give one of "
                                f"{', '.join(names)}, or --layer=K (the paper's layer, 1..{layers.PAPER_NUM_WS})")
        return
    with cli.user_input(f"--layer={s['layer']}", f"give --layer between 1 and {layers.PAPER_NUM_WS} (or --point)"):
        layers.activation_point(G, s["layer"])


def demo(G, s):
    a, b = edit_cli.hidden_render(G, s["truth_seed"]), edit_cli.hidden_render(G, s["truth_seed"] + 30)
    spatial = s["op"] == "spatial"
    return edit_cli.Inputs(images={"a": a, "b": b},
                           masks={"mask": mask_ops.from_spec(DEMO_MASK, G.img_resolution)} if spatial else {},
                           latents={"a": edit_cli.hidden_vars(G, s["truth_seed"]),
                                    "b": edit_cli.hidden_vars(G, s["truth_seed"] + 30)},
                           source=f"two renders of the generator from hidden latents (seeds {s['truth_seed']}, "
                                  f"{s['truth_seed'] + 30})" + (f"; mask {DEMO_MASK} (white = from a)" if spatial
                                                                 else ""))


def channel_bits(G, point: str, fraction: float) -> np.ndarray:
    """[C] bits at `point`: the first round(fraction·C) channels 1 (from a), the rest 0 (from b)."""
    C = channel_count(G, point)
    k = int(round(fraction * C))
    cli.log(f"--op=channel: the first {k} of the {C} channels at {point} from a, the rest from b")
    return (np.arange(C) < k).astype(np.float32)


def call(G, inputs, vgg, s, run):
    if s["op"] == "average":
        operand = s["lam"]
    elif s["op"] == "channel":
        point = s.get("point") or layers.activation_point(G, s["layer"])
        operand = channel_bits(G, point, s["channel_fraction"])
    else:
        operand = inputs.masks["mask"]
    return apps.feature_transfer(G, inputs.images["a"], inputs.images["b"], operand, vgg=vgg, layer=s["layer"],
                                 point=s.get("point"), op=s["op"], embed_steps=s["embed_w_steps"],
                                 resize_to=s["resize_to"], seed=s["seed"], run=run)


def operand_of(result) -> tuple:
    """(M, its words for the grid) of a non-spatial run, from its settings."""
    if result.settings["op"] == "average":
        return result.settings["lam"], f"λ = {result.settings['lam']}"
    bits = result.settings["channels"]
    return bits, f"{result.settings['channels_from_a']}/{np.shape(bits)[-1]} channels from a"


def measure(G, inputs, result, vgg, s):
    if s["op"] != "spatial":
        return measure_whole(G, inputs, result)
    m = inputs.masks["mask"]
    out, ra, rb = result.images["transfer"][0], result.images["a"][0], result.images["b"][0]
    point = result.settings["point"]
    measured = {"point": result.settings["layer"],
                "psnr_mask_region_vs_a_rendering": edit_cli.region_psnr(out, ra, m),
                "psnr_rest_vs_b_rendering": edit_cli.region_psnr(out, rb, 1 - m),
                "psnr_embedding_a": edit_cli.region_psnr(ra, inputs.images["a"], np.ones_like(m)),
                "psnr_embedding_b": edit_cli.region_psnr(rb, inputs.images["b"], np.ones_like(m))}
    if carries_skip(G, point):  # the same copy of the features alone, the skip image left as a's
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


def measure_whole(G, inputs, result):
    """average and channel: the transfer against a's and b's renderings over the whole image."""
    out, ra, rb = result.images["transfer"][0], result.images["a"][0], result.images["b"][0]
    whole = np.ones(out.shape[:2], np.float32)
    measured = {"point": result.settings["layer"], "op": result.settings["op"],
                "psnr_vs_a_rendering": edit_cli.region_psnr(out, ra, whole),
                "psnr_vs_b_rendering": edit_cli.region_psnr(out, rb, whole),
                "psnr_embedding_a": edit_cli.region_psnr(ra, inputs.images["a"], whole),
                "psnr_embedding_b": edit_cli.region_psnr(rb, inputs.images["b"], whole)}
    if inputs.latents:  # the demo: the same operation on the hidden true latents (a perfect embedding)
        oracle = apps.combine(G, inputs.latents["a"], inputs.latents["b"], operand_of(result)[0],
                              point=result.settings["point"], op=result.settings["op"])[0]
        measured["true_latents_psnr_vs_a"] = edit_cli.region_psnr(oracle, inputs.images["a"], whole)
        measured["true_latents_psnr_vs_b"] = edit_cli.region_psnr(oracle, inputs.images["b"], whole)
        result.images["true_latents"] = oracle[None]
    return measured


def _embeddings(result):
    import jax

    res = result.runs["embed"]
    v = {"w_plus": res.vars["w_plus"], "noise": res.phase_vars[0]["noise"]}
    n = np.shape(v["w_plus"])[0] // 2
    return jax.tree.map(lambda t: t[:n], v), jax.tree.map(lambda t: t[n:], v)


def grid(inputs, result, m):
    if result.settings["op"] != "spatial":
        return grid_whole(inputs, result, m)
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


def grid_whole(inputs, result, m):
    """average and channel: no mask; the transfer's title says λ or the channel count."""
    row = [inputs.images["a"], inputs.images["b"], result.images["a"][0], result.images["b"][0],
           result.images["transfer"][0]]
    titles = ["a", "b", f"a embedded\n{m['psnr_embedding_a']:.1f} dB", f"b embedded\n{m['psnr_embedding_b']:.1f} dB",
              f"I_att, {operand_of(result)[1]}\n{m['psnr_vs_a_rendering']:.1f} dB vs a, "
              f"{m['psnr_vs_b_rendering']:.1f} vs b"]
    if "true_latents" in result.images:
        row.append(result.images["true_latents"][0])
        titles.append(f"the same on the hidden latents\n{m['true_latents_psnr_vs_a']:.1f} dB vs a, "
                      f"{m['true_latents_psnr_vs_b']:.1f} vs b")
    return [row], [titles], [f"I_att at {result.settings['point']}"]


EDIT = edit_cli.Edit(
    name="feature_transfer", doc="I_att, attribute-level feature transfer",
    presets={"demo": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=600),
             "paper": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=5000),
             "smoke": dict(layer=layers.FEATURE_TRANSFER_LAYER, op="spatial", lam=0.5, embed_w_steps=3)},
    image_flags=("a", "b"), mask_flags=("mask",), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings, check=check)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(edit_for_flags()))
