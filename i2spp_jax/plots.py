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
