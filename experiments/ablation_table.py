"""Prints the ablation table of the reconstruct.py runs in a folder: a row per run and target.

    python -m experiments.ablation_table runs/ablation

Each subfolder holding a finished run (its metrics.json) gives a row for every target it embedded:
the demo's `rendered` target (hidden truth known), a real photograph, or a user's image. Columns:
PSNR after the first phase and at the end (dB, vs the target), SSIM at the end, PSNR of the final
W+ rendered with the run's initial noise and with no noise (how much of the image the latent
carries, i.e. how editable the result is), RMSE of the final W+ to the hidden one (only a rendered
target has one: "–" marks a target without ground truth), RMS of the final noise maps (N(0, I) has 1).
A folder that is missing or holds no finished run is refused in one line.
"""

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import cli
from experiments.presets import hidden_target
from i2spp_jax import embed, io, metrics

NO_TRUTH = "–"  # a cell that needs the hidden truth, for a target without one
HEADER = ("| run | target | phases | PSNR phase 1 | PSNR final | SSIM final | W+ alone, initial noise "
          "| W+ alone, no noise | W+ RMSE to truth | noise RMS |")


def _psnr(image, target) -> float:
    """PSNR (dB) of one rendered image [1, H, W, C] against target [H, W, C], both in [-1, 1]."""
    return float(metrics.psnr(jnp.clip(image, -1, 1), jnp.asarray(target)[None])[0])


def _target(G, run: str, name: str, config: dict) -> np.ndarray:
    """The target [H, W, C] in [-1, 1]: the demo's rendered one recomputed exactly from its hidden latent,
    any other (a photograph, a user's image) read back from NAME/target.png."""
    if name == "rendered":
        return np.asarray(hidden_target(G, config["truth_seed"], config["truth_psi"])[2])
    image, _ = io.load_image(os.path.join(run, name, "target.png"), G.img_resolution)
    return image


def _w_alone_initial_noise(G, w, target, entry: dict, config: dict) -> float:
    """The final W+ with the run's initial noise: metrics.json's, or (a run written before it held that)
    recomputed with the initial noise of a batch of one."""
    if "final_w_plus_with_initial_noise" in entry:
        return entry["final_w_plus_with_initial_noise"]["psnr"]
    init_noise = embed.initial_variables(G, noise_init=config["noise_init"], seed=config["seed"])["noise"]
    return _psnr(G.synthesis(w, noise=[n[None] for n in init_noise]), target)


def target_row(G, run: str, name: str, entry: dict, config: dict) -> str:
    """The table row of target `name` of the run in folder `run` (metrics.json's `entry` for it)."""
    target = _target(G, run, name, config)
    w = jnp.asarray(np.load(os.path.join(run, name, "w_plus.npy")))[None]
    noise = np.concatenate([np.load(f).ravel() for f in sorted(glob.glob(os.path.join(run, name, "noise", "*.npy")))])
    alone = _w_alone_initial_noise(G, w, target, entry, config)
    bare = _psnr(G.synthesis(w, noise="none"), target)
    rmse = entry.get("truth", {}).get("w_plus_rmse_vs_hidden")
    pp = entry["per_phase"]
    phases = " → ".join(f"{p['phase']} {p['iterations']}" for p in pp)
    return (f"| {os.path.basename(run)} | {name} | {phases} | {pp[0]['psnr']:.2f} | {pp[-1]['psnr']:.2f} | "
            f"{pp[-1]['ssim']:.4f} | {alone:.2f} | {bare:.2f} | {NO_TRUTH if rmse is None else f'{rmse:.3f}'} | "
            f"{np.sqrt(np.mean(noise ** 2)):.2f} |")


def finished_runs(root: str) -> list[str]:
    """The subfolders of `root` holding a finished run (metrics.json); cli.UserError if there is none."""
    if not os.path.isdir(root):
        raise cli.UserError(f"{root} is not a folder; give the folder holding the reconstruct.py runs "
                            "(each run's --out is a subfolder of it)")
    runs = [d for d in sorted(glob.glob(os.path.join(root, "*"))) if os.path.exists(os.path.join(d, "metrics.json"))]
    if not runs:
        raise cli.UserError(f"{root} holds no finished reconstruct.py run (a subfolder with metrics.json); give "
                            "the folder whose subfolders are the runs' --out")
    return runs


def table(root: str) -> str:
    """The markdown table of every target of every finished run in `root`, and a note under it when a
    target has no ground truth."""
    generators = {}  # each run's own generator (the demo, or a checkpoint given with --generator)
    rows, no_truth = [HEADER, "|" + " --- |" * 10], False
    for run in finished_runs(root):
        with open(os.path.join(run, "metrics.json")) as f:
            m = json.load(f)
        path = m["config"]["generator"]
        if path not in generators:
            generators[path] = cli.load_generator(path)
        for name, entry in m["targets"].items():
            rows.append(target_row(generators[path], run, name, entry, m["config"]))
            no_truth |= "truth" not in entry
    if no_truth:
        rows.append(f"\n{NO_TRUTH} in 'W+ RMSE to truth': a target without ground truth (a photograph or a user's image)")
    return "\n".join(rows)


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs reading each generator at INFO
    if len(argv) > 2:
        raise cli.UserError(f"give one folder of runs, not {len(argv) - 1}: {' '.join(argv[1:])}")
    print(table(argv[1] if len(argv) > 1 else "runs/ablation"))


if __name__ == "__main__":
    cli.run(main)
