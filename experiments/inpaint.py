"""Image inpainting with diverse fillings (paper Alg. 4), from the command line.

    # The demo: the shipped generator's own image (from a hidden latent: the hole has a true
    # answer), a square hole, 4 fillings; the mean-latent fill and W+ without the layer mask beside it.
    python -m experiments.inpaint

    # Your image and mask (white = missing; a PNG, or rect:TOP,LEFT,H,W / ellipse:... in fractions).
    python -m experiments.inpaint --image=face.png --hole=hole.png --generator=ckpt/ffhq --out=runs/inpaint_face

    python -m experiments.inpaint --paper      # the paper's settings on the demo generator (same steps, VGG at 256)
    python -m experiments.inpaint --smoke --out=/tmp/x   # seconds (tests)

Writes grid.png, metrics.json, inputs/, outputs/ (fillings, composites), ckpt/ (see edit_cli).
"""

import numpy as np
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps, layers
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS
DEMO_HOLE = "rect:0.25,0.3125,0.5,0.375"  # a 16x12 hole in the middle of a 32x32 image


def extra_flags():
    flags.DEFINE_integer("fillings", None, "number of fillings (filling 0 from w̄, the others from U[-0.4, 0.4])",
                         lower_bound=1)
    flags.DEFINE_integer("w_steps", None, "W_l iterations (paper: 200)", lower_bound=0)
    flags.DEFINE_integer("noise_steps", None, "Mk_n iterations (paper: 1000)", lower_bound=0)
    flags.DEFINE_bool("compare", None, "also run W+ without the layer mask (all layers) as a baseline")


def settings():
    return {"fillings": FLAGS.fillings, "w_steps": FLAGS.w_steps, "noise_steps": FLAGS.noise_steps,
            "compare": FLAGS.compare}


def demo(G, s):
    truth = edit_cli.hidden_render(G, s["truth_seed"])
    hole = mask_ops.from_spec(DEMO_HOLE, G.img_resolution)
    damaged = truth * (1 - hole[..., None]) + hole[..., None] * -1.0  # the hole blacked out
    return edit_cli.Inputs(images={"image": damaged}, masks={"hole": hole}, truth={"image": truth},
                           source=f"rendered by the generator from a hidden latent (seed {s['truth_seed']}), "
                                  f"hole {DEMO_HOLE} blacked out: the hole's true content is known")


def call(G, inputs, vgg, s, run):
    kw = dict(vgg=vgg, w_steps=s["w_steps"], noise_steps=s["noise_steps"], resize_to=s["resize_to"], seed=s["seed"],
              run=run)
    result = apps.inpaint(G, inputs.images["image"], inputs.masks["hole"], num_fillings=s["fillings"], **kw)
    if s["compare"]:  # the ablation: every layer free (no w_m), one filling from w̄
        base = apps.inpaint(G, inputs.images["image"], inputs.masks["hole"], num_fillings=1,
                            layers=range(1, layers.PAPER_NUM_WS + 1),
                            run=apps.RunOptions(**{**run.__dict__, "checkpoint_dir": run.checkpoint_dir + "_all_layers"}),
                            **{k: v for k, v in kw.items() if k != "run"})
        result.images["all_layers"] = base.images["composite"]
        result.runs["all_layers"] = base.runs["inpaint"]
    return result


def measure(G, inputs, result, vgg, s):
    hole = inputs.masks["hole"]
    out = {"layers": result.settings["layers"]}
    truth = inputs.truth.get("image")
    comp = result.images["composite"]
    if truth is None:
        out["known_region_psnr_of_renders"] = [edit_cli.region_psnr(f, inputs.images["image"], 1 - hole)
                                               for f in result.images["filling"]]
        return out
    per = [edit_cli.region_psnr(c, truth, hole) for c in comp]
    out.update({"hole_psnr_per_filling": per, "hole_psnr_filling0_from_w_avg": per[0], "hole_psnr_best": max(per),
                "hole_psnr_mean": float(np.mean(per)),
                "hole_psnr_mean_latent_fill": edit_cli.region_psnr(
                    apps.mean_latent_fill(G, inputs.images["image"], hole)[0], truth, hole),
                "known_psnr_of_filling0_render": edit_cli.region_psnr(result.images["filling"][0], truth, 1 - hole),
                "diversity_rms_between_fillings_in_hole": _diversity(comp, hole)})
    if "all_layers" in result.images:
        out["hole_psnr_all_layers_w_avg"] = edit_cli.region_psnr(result.images["all_layers"][0], truth, hole)
    return out


def _diversity(comp, hole):
    m = hole[None, :, :, None] > 0.5
    c = np.asarray(comp)
    if len(c) < 2:
        return 0.0
    d = [np.sqrt(np.mean(((c[i] - c[j])[m[0].repeat(c.shape[-1], -1)]) ** 2)) for i in range(len(c))
         for j in range(i + 1, len(c))]
    return float(np.mean(d))


def grid(inputs, result, m):
    hole = inputs.masks["hole"]
    row = [inputs.images["image"], edit_cli.as_image(hole), edit_cli.as_image(result.masks["known"])]
    titles = ["damaged image", "hole (white = missing)", "loss mask 1 - M_blur+"]
    per = m.get("hole_psnr_per_filling")
    for i, c in enumerate(result.images["composite"]):
        row.append(c)
        start = "w̄" if i == 0 else "U[-0.4,0.4]"
        titles.append(f"filling {i} (from {start})" + (f"\nhole {per[i]:.2f} dB" if per else ""))
    rows, all_titles = [row], [titles]
    if "image" in inputs.truth:
        truth = inputs.truth["image"]
        base = [truth]
        base_t = ["truth (hidden)"]
        if "all_layers" in result.images:
            base.append(result.images["all_layers"][0])
            base_t.append(f"no layer mask (all W+)\nhole {m['hole_psnr_all_layers_w_avg']:.2f} dB")
        rows.append(base)
        all_titles.append(base_t)
    labels = ["inputs and fillings", "truth and baseline"][:len(rows)]
    return rows, all_titles, labels


EDIT = edit_cli.Edit(
    name="inpaint", doc="Alg. 4, inpainting with diverse fillings",
    presets={"demo": dict(fillings=4, w_steps=200, noise_steps=1000, compare=True),
             "paper": dict(fillings=4, w_steps=200, noise_steps=1000, compare=False),
             "smoke": dict(fillings=2, w_steps=3, noise_steps=3, compare=False)},
    image_flags=("image",), mask_flags=("hole",), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
