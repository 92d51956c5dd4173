"""Result figures: labelled image tables and loss/PSNR curves (matplotlib), sample grids (pillow)."""

import os
from typing import Sequence

import numpy as np
from PIL import Image

from i2spp_jax.io import to_pil

_BG = (255, 255, 255)


def _save(im: Image.Image, path: str) -> None:
    tmp = path + ".tmp.png"
    im.save(tmp)
    os.replace(tmp, path)


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no global backend state is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _savefig(fig, path: str) -> None:
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def image_grid(path: str, rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]],
               row_labels: Sequence[str] = (), *, panel_inches: float = 2.3) -> None:
    """A table of images (matplotlib): rows of [H, W, C] images in [-1, 1], a title over each panel
    and a label left of each row. Pixels are drawn as blocks (no smoothing), large enough to see."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = _figure(panel_inches * n_cols + 0.6, panel_inches * n_rows + 0.5 * n_rows)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for i, (row, row_titles) in enumerate(zip(rows, titles)):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            ax.imshow(to_pil(np.asarray(row[j])).convert("RGB"), interpolation="nearest")
            ax.set_title(row_titles[j], fontsize=9)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)


def curves(path: str, history: dict, *, phase_names: Sequence[str] = (), image_names: Sequence[str] = (),
           phase_notes: Sequence[str] = ()) -> None:
    """Loss (log scale) and PSNR against the iteration (matplotlib), a line per image, the phase
    changes marked and explained, legends outside the plotting area.

    history: {"loss": [T, B], "psnr": [T, B], "phase": [T], ...} as returned by `embed`.
    phase_notes: one note per phase change, printed beside its marker (why the loss jumps).
    """
    loss, psnr_ = np.asarray(history["loss"], np.float64), np.asarray(history["psnr"], np.float64)
    phase = np.asarray(history["phase"])
    it = np.arange(1, len(phase) + 1)
    bounds = [int(i) for i in np.flatnonzero(np.diff(phase)) + 1]
    fig = _figure(11, 7)
    ax_loss, ax_psnr = fig.subplots(2, 1, sharex=True)
    names = list(image_names) or [f"image {b}" for b in range(loss.shape[1])]
    for b, name in enumerate(names):
        ax_loss.plot(it, loss[:, b], lw=1.2, label=name)
        ax_psnr.plot(it, psnr_[:, b], lw=1.2, label=name)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss of the phase (Eq. 1, log scale)")
    ax_psnr.set_ylabel("PSNR against the target (dB)")
    ax_psnr.set_xlabel("iteration")
    title = " then ".join(phase_names) if phase_names else ""
    ax_loss.set_title(f"Embedding: {title}" if title else "Embedding")
    for k, x in enumerate(bounds):
        for ax in (ax_loss, ax_psnr):
            ax.axvline(x + 0.5, color="grey", ls="--", lw=1)
        note = phase_notes[k] if k < len(phase_notes) else f"phase {k + 2} starts"
        ax_loss.annotate(note, xy=(x + 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -4),
                         textcoords="offset points", va="top", fontsize=8, color="dimgrey", wrap=True)
    if phase_names:
        starts = [0] + bounds
        for k, (s0, name) in enumerate(zip(starts, phase_names)):
            ax_psnr.annotate(name, xy=(s0 + 1, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                             color="dimgrey")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    _savefig(fig, path)


def sample_grid(path: str, images: np.ndarray, *, nrow: int = 8, scale: int = 2) -> None:
    """Images [N, H, W, C] in [-1, 1] tiled nrow per row with 2-pixel gaps, each upscaled `scale`x."""
    n, h, w, _ = images.shape
    ncol = -(-n // nrow)
    gap = 2
    out = Image.new("RGB", (nrow * (w * scale + gap) + gap, ncol * (h * scale + gap) + gap), _BG)
    for i, img in enumerate(images):
        t = to_pil(img).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
        out.paste(t, (gap + (i % nrow) * (w * scale + gap), gap + (i // nrow) * (h * scale + gap)))
    _save(out, path)


def training_curves(path: str, history: dict) -> None:
    """GAN losses against thousands of images shown (matplotlib): G and D losses, and R1."""
    kimg = np.asarray(history["kimg"], np.float64)
    if kimg.size < 2:
        return
    fig = _figure(10, 6.5)
    ax, ax2 = fig.subplots(2, 1, sharex=True)
    ax.plot(kimg, history["G_loss"], label="G loss: softplus(-D(G(z)))", lw=1)
    ax.plot(kimg, history["D_loss"], label="D loss: softplus(D(G(z))) + softplus(-D(x))", lw=1)
    ax.axhline(np.log(4), color="grey", ls=":", lw=1, label="D loss at equilibrium, 2 ln 2")
    ax.set_ylabel("loss")
    ax.set_title("StyleGAN2 training: non-saturating logistic loss")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    r1 = np.asarray(history["R1"], np.float64)
    keep = r1 > 0
    ax2.plot(kimg, history["D_real"], label="mean D(x), reals", lw=1)
    ax2.plot(kimg, history["D_fake"], label="mean D(G(z)), fakes", lw=1)
    if keep.any():
        ax3 = ax2.twinx()
        ax3.plot(kimg[keep], r1[keep], color="tab:red", lw=1, label="R1 penalty (right axis)")
        ax3.set_ylabel("R1 = E|grad D(x)|^2", color="tab:red")
        ax3.legend(loc="lower left", bbox_to_anchor=(1.08, 0.0), fontsize=8, frameon=False)
    ax2.set_xlabel("thousands of real images shown (kimg)")
    ax2.set_ylabel("discriminator logit")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
