"""Result figures drawn with pillow only: an image grid with captions, and loss/PSNR curves."""

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from i2spp_jax.io import to_pil

_BG, _FG, _GRID = (255, 255, 255), (0, 0, 0), (220, 220, 220)
_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _save(im: Image.Image, path: str) -> None:
    tmp = path + ".tmp.png"
    im.save(tmp)
    os.replace(tmp, path)


def image_grid(path: str, images: Sequence[np.ndarray], captions: Sequence[str], *, min_size: int = 128) -> None:
    """One row of [H, W, C] images in [-1, 1] with a caption under each (upscaled to min_size)."""
    font = ImageFont.load_default()
    tiles = []
    for img in images:
        t = to_pil(img).convert("RGB")
        if t.width < min_size:
            t = t.resize((min_size, min_size * t.height // t.width), Image.NEAREST)
        tiles.append(t)
    w, h, pad, cap = max(t.width for t in tiles), max(t.height for t in tiles), 4, 28
    out = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + cap + 2 * pad), _BG)
    d = ImageDraw.Draw(out)
    for i, (t, c) in enumerate(zip(tiles, captions)):
        x = pad + i * (w + pad)
        out.paste(t, (x, pad))
        for j, line in enumerate(str(c).split("\n")[:2]):
            d.text((x, h + pad + 2 + 12 * j), line, fill=_FG, font=font)
    _save(out, path)


def _panel(d, box, series, title, ylabel_fmt, vlines=(), log=False):
    x0, y0, x1, y1 = box
    font = ImageFont.load_default()
    ys = [np.asarray(s, np.float64) for _, s in series]
    allv = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.zeros(1)
    if log:
        allv = np.log10(np.maximum(allv, 1e-30))
    lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(y) for y in ys) if ys else 1
    left, bottom = x0 + 52, y1 - 18
    d.rectangle((left, y0 + 16, x1, bottom), outline=_FG)
    d.text((left, y0), title, fill=_FG, font=font)
    for k in range(5):  # y ticks
        v = lo + (hi - lo) * k / 4
        yy = bottom - (bottom - y0 - 16) * k / 4
        d.line((left, yy, x1, yy), fill=_GRID)
        d.text((x0, yy - 6), ylabel_fmt(10**v if log else v), fill=_FG, font=font)
    for k in range(5):  # x ticks
        xx = left + (x1 - left) * k / 4
        d.text((min(xx - 8, x1 - 28), bottom + 3), str(int(round(n * k / 4))), fill=_FG, font=font)
    for v in vlines:
        xx = left + (x1 - left) * v / max(n, 1)
        d.line((xx, y0 + 16, xx, bottom), fill=(150, 150, 150))
    for c, ((name, _), y) in enumerate(zip(series, ys)):
        yv = np.log10(np.maximum(y, 1e-30)) if log else y
        pts = [(left + (x1 - left) * i / max(n - 1, 1), bottom - (bottom - y0 - 16) * (v - lo) / (hi - lo))
               for i, v in enumerate(yv) if np.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=_COLOURS[c % len(_COLOURS)], width=2)
        d.text((x1 - 150, y0 + 20 + 12 * c), name, fill=_COLOURS[c % len(_COLOURS)], font=font)


def curves(path: str, history: dict, *, phase_names: Optional[Sequence[str]] = None, image: int = 0) -> None:
    """Loss (log scale) and PSNR per iteration of one image, phase boundaries as grey lines.

    history: {"loss": [T, B], "psnr": [T, B], "phase": [T], ...} as returned by `embed`.
    """
    phase = np.asarray(history["phase"])
    bounds = [int(i) for i in np.flatnonzero(np.diff(phase)) + 1]
    title = " -> ".join(phase_names) if phase_names else ""
    out = Image.new("RGB", (720, 520), _BG)
    d = ImageDraw.Draw(out)
    _panel(d, (8, 8, 710, 250), [("loss (Eq. 1)", np.asarray(history["loss"])[:, image])],
           f"loss, log scale   {title}", lambda v: f"{v:.1e}", bounds, log=True)
    _panel(d, (8, 268, 710, 510), [("PSNR (dB)", np.asarray(history["psnr"])[:, image])],
           "PSNR vs target (dB) per iteration", lambda v: f"{v:.1f}", bounds)
    _save(out, path)


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kimg = np.asarray(history["kimg"], np.float64)
    if kimg.size < 2:
        return
    fig = Figure(figsize=(9, 6.5), dpi=100)
    FigureCanvasAgg(fig)
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
