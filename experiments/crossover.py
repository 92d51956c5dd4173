"""Image crossover (paper Alg. 3), from the command line: region M from image x, the rest from y.

    # The demo: two of the generator's own images (hidden latents), the left half of one with the
    # right half of the other; PSNR of each region against its source and a seam measure.
    python -m experiments.crossover

    # Your images and mask (white = from --x; a PNG, or half:left / rect:... / ellipse:...).
    python -m experiments.crossover --x=a.png --y=b.png --mask=half:left --generator=ckpt/ffhq --out=runs/cross

    python -m experiments.crossover --paper    # the paper's 1000 + 1000 iterations, VGG at 256
    python -m experiments.crossover --smoke --out=/tmp/x

Writes grid.png, metrics.json, inputs/, outputs/, ckpt/ (see edit_cli).
"""

import numpy as np
from absl import flags

from experiments import cli, edit_cli
from i2spp_jax import apps
from i2spp_jax import masks as mask_ops

FLAGS = flags.FLAGS
DEMO_MASK = "half:left"


def extra_flags():
    flags.DEFINE_integer("w_steps", None, "W_l iterations (paper: 1000)", lower_bound=0)
    flags.DEFINE_integer("noise_steps", None, "Mk_n iterations (paper: 1000)", lower_bound=0)


def settings():
    return {"w_steps": FLAGS.w_steps, "noise_steps": FLAGS.noise_steps}


def demo(G, s):
    x, y = edit_cli.hidden_render(G, s["truth_seed"]), edit_cli.hidden_render(G, s["truth_seed"] + 10)
    return edit_cli.Inputs(images={"x": x, "y": y}, masks={"mask": mask_ops.from_spec(DEMO_MASK, G.img_resolution)},
                           truth={"x": x, "y": y},
                           source=f"two renders of the generator from hidden latents (seeds {s['truth_seed']}, "
                                  f"{s['truth_seed'] + 10}); mask {DEMO_MASK}")


def call(G, inputs, vgg, s, run):
    return apps.crossover(G, inputs.images["x"], inputs.images["y"], inputs.masks["mask"], vgg=vgg,
                          w_steps=s["w_steps"], noise_steps=s["noise_steps"], resize_to=s["resize_to"],
                          seed=s["seed"], run=run)


def seam(img, mask) -> float:
    """Mean absolute step between neighbouring pixels on either side of the mask's edge ([-1, 1] scale)."""
    img, m = np.asarray(img), np.asarray(mask) > 0.5
    steps = []
    for axis in (0, 1):
        a, b = np.take(img, range(img.shape[axis] - 1), axis), np.take(img, range(1, img.shape[axis]), axis)
        ma, mb = np.take(m, range(m.shape[axis] - 1), axis), np.take(m, range(1, m.shape[axis]), axis)
        edge = ma != mb
        steps.append(np.abs(a - b)[edge])
    return float(np.mean(np.concatenate(steps)))


def measure(G, inputs, result, vgg, s):
    m = inputs.masks["mask"]
    x, y = inputs.images["x"], inputs.images["y"]
    out_img = result.images["crossover"][0]
    naive = m[..., None] * x + (1 - m[..., None]) * y
    interior = np.asarray(mask_ops.dilate(m[..., None], 2))[..., 0]  # M grown by 2 px: its complement is the rest, 2+ px from the edge
    inside = m * (1 - (np.asarray(mask_ops.dilate((1 - m)[..., None], 2))[..., 0]))
    outside = (1 - interior)
    return {"psnr_mask_region_vs_x": edit_cli.region_psnr(out_img, x, m),
            "psnr_rest_vs_y": edit_cli.region_psnr(out_img, y, 1 - m),
            "psnr_mask_interior_vs_x": edit_cli.region_psnr(out_img, x, inside),
            "psnr_rest_interior_vs_y": edit_cli.region_psnr(out_img, y, outside),
            "seam_step_result": seam(out_img, m), "seam_step_cut_and_paste": seam(naive, m),
            "w_result_psnr_mask_region_vs_x": edit_cli.region_psnr(result.images["w_result"][0], x, m),
            "w_result_psnr_rest_vs_y": edit_cli.region_psnr(result.images["w_result"][0], y, 1 - m)}


def grid(inputs, result, m):
    mask = inputs.masks["mask"]
    naive = mask[..., None] * inputs.images["x"] + (1 - mask[..., None]) * inputs.images["y"]
    rows = [[inputs.images["x"], inputs.images["y"], edit_cli.as_image(mask), edit_cli.as_image(result.masks["blur"]),
             naive, result.images["w_result"][0], result.images["crossover"][0]]]
    titles = [["x (white region)", "y (the rest)", "mask M (white = x)", "M_blur (loss weight)",
               f"cut and paste\nseam step {m['seam_step_cut_and_paste']:.3f}",
               f"after W+: M {m['w_result_psnr_mask_region_vs_x']:.1f} dB vs x,\nrest {m['w_result_psnr_rest_vs_y']:.1f} dB vs y",
               f"crossover: M {m['psnr_mask_region_vs_x']:.1f} dB vs x,\nrest {m['psnr_rest_vs_y']:.1f} dB vs y, "
               f"seam {m['seam_step_result']:.3f}"]]
    return rows, titles, ["Alg. 3"]


EDIT = edit_cli.Edit(
    name="crossover", doc="Alg. 3, image crossover",
    presets={"demo": dict(w_steps=400, noise_steps=400), "paper": dict(w_steps=1000, noise_steps=1000),
             "smoke": dict(w_steps=3, noise_steps=3)},
    image_flags=("x", "y"), mask_flags=("mask",), demo=demo, call=call, measure=measure, grid=grid,
    extra_flags=extra_flags, settings=settings)

if __name__ == "__main__":
    edit_cli.define_flags(EDIT)
    cli.run(lambda argv: edit_cli.main(EDIT))
