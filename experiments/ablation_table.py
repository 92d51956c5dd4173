"""Prints the ablation table from reconstruct.py output directories (the rendered target, hidden truth).

    python -m experiments.ablation_table runs/ablation

Columns: PSNR after the first phase and at the end (dB, vs the target), SSIM at the end, PSNR of the
final W+ rendered with the run's initial noise and with no noise (how much of the image the latent
carries, i.e. how editable the result is), RMSE of the final W+ to
the hidden one, RMS of the final noise maps (N(0, I) has 1).
"""

import glob
import json
import os
import sys

import jax.numpy as jnp
import numpy as np

import i2spp_jax
from experiments.presets import hidden_target
from i2spp_jax import embed, metrics


def table(root: str) -> str:
    generators = {}  # each run's own generator (the demo, or a checkpoint given with --generator)
    rows = ["| run | phases | PSNR phase 1 | PSNR final | SSIM final | W+ alone, initial noise | W+ alone, no noise "
            "| W+ RMSE to truth | noise RMS |", "|" + " --- |" * 9]
    for d in sorted(glob.glob(os.path.join(root, "*"))):
        if not os.path.exists(os.path.join(d, "metrics.json")):
            continue
        m = json.load(open(os.path.join(d, "metrics.json")))
        path = m["config"]["generator"]
        if path not in generators:
            generators[path] = i2spp_jax.load_generator(path)
        G = generators[path]
        _, _, target = hidden_target(G, m["config"]["truth_seed"], m["config"]["truth_psi"])
        w = jnp.asarray(np.load(os.path.join(d, "rendered", "w_plus.npy")))[None]
        noise = np.concatenate([np.load(f).ravel()
                                for f in sorted(glob.glob(os.path.join(d, "rendered", "noise", "*.npy")))])
        bare = float(metrics.psnr(jnp.clip(G.synthesis(w, noise="none"), -1, 1), target[None])[0])
        t = m["targets"]["rendered"]
        rmse = t.get("truth", {}).get("w_plus_rmse_vs_hidden", float("nan"))
        c = m["config"]
        init_noise = embed.initial_variables(G, noise_init=c["noise_init"], seed=c["seed"])["noise"]
        alone = float(metrics.psnr(jnp.clip(G.synthesis(w, noise=[n[None] for n in init_noise]), -1, 1),
                                   target[None])[0])
        pp = t["per_phase"]
        phases = " → ".join(f"{p['phase']} {p['iterations']}" for p in pp)
        rows.append(f"| {os.path.basename(d)} | {phases} | {pp[0]['psnr']:.2f} | {pp[-1]['psnr']:.2f} | "
                    f"{pp[-1]['ssim']:.4f} | {alone:.2f} | {bare:.2f} | {rmse:.3f} | {np.sqrt(np.mean(noise ** 2)):.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation"))
