"""End-to-end tests of experiments/reconstruct.py (Algorithm 2) with the smoke preset."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from experiments import reconstruct as R
from i2spp_jax import io

OUTPUTS = ["target.png", "w_result.png", "wn_result.png", "diff.png", "grid.png", "curves.png", "metrics.json",
           "history.npz", "w_plus.npy", "w_plus_phase1.npy", "w_plus_phase2.npy"]


def smoke(tmp_path, **kw):
    cfg = R.ReconstructConfig(out=str(tmp_path / "out"), preset="smoke", vgg="random", w_steps=4, noise_steps=3,
                              log_every=2, **kw)
    lines = []
    return R.reconstruct(cfg, log=lines.append), lines, cfg.out


def test_demo_smoke_writes_everything(tmp_path):
    m, lines, out = smoke(tmp_path)
    for f in OUTPUTS:
        assert os.path.exists(os.path.join(out, f)), f
    assert len(os.listdir(os.path.join(out, "noise"))) == 9 and os.path.exists(os.path.join(out, "truth_w_plus.npy"))
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert [q["phase"] for q in saved["per_phase"]] == ["W_l", "Mk_n"]
    assert saved["final"]["psnr"] == pytest.approx(m["final"]["psnr"]) and 5 < m["final"]["psnr"] < 60
    assert saved["vgg_resolution"] == 64 and "w_plus_rmse_vs_hidden" in saved["truth"]
    assert saved["final_w_plus_with_initial_noise"]["psnr"] > 5
    h = np.load(os.path.join(out, "history.npz"))
    assert h["psnr"].shape == (7, 1) and h["phase"].tolist() == [0] * 4 + [1] * 3
    assert np.load(os.path.join(out, "w_plus.npy")).shape == (10, 128)
    assert any("PSNR" in line and "it/s" in line for line in lines)
    # a rerun finds the finished checkpoint and rewrites the same results
    m2, lines2, _ = smoke(tmp_path)
    assert any("resumed" in line for line in lines2) and m2["final"] == m["final"]


def test_user_image_converted_with_messages(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (50, 80, 4), dtype=np.uint8); a[..., 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "in.png")
    m, lines, out = smoke(tmp_path, image=str(tmp_path / "in.png"), schedule="w_only")
    assert any("centre-cropped from 80x50 to 50x50" in line for line in lines)
    assert any("resized from 50x50 to 64x64" in line for line in lines)
    assert os.path.exists(os.path.join(out, "phase1_W_l.png")) and "truth" not in m
    assert Image.open(os.path.join(out, "target.png")).size == (64, 64)


def test_corrupt_image_refused(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(io.ImageError, match="bad.jpg"):
        smoke(tmp_path, image=str(tmp_path / "bad.jpg"))


def test_presets():
    assert R.PRESETS["paper"] == (5000, 3000, 256)
    class G:  # noqa: D401 - a stand-in with the one attribute _resolve reads
        img_resolution = 1024
    assert R._resolve(R.ReconstructConfig(generator="ckpt/ffhq"), G)[:4] == ("paper", 5000, 3000, 256)
    G.img_resolution = 64
    assert R._resolve(R.ReconstructConfig(), G) == ("demo", 600, 600, 64)


def test_sigkill_and_resume_bit_identical(tmp_path):
    """A real kill -9 mid-run (orbax writes atomically), then the same command: identical results."""
    import signal
    import subprocess
    import sys
    import time

    def cmd(out):
        return [sys.executable, "-m", "experiments.reconstruct", "--smoke", "--w_steps=20", "--noise_steps=6",
                "--checkpoint_every=4", f"--out={out}"]

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    killed = str(tmp_path / "killed")
    p = subprocess.Popen(cmd(killed), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(killed, "ckpt")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 8 for d in os.listdir(ckpt)):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert p.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "wn_result.png"))
    subprocess.run(cmd(killed), cwd=root, check=True, capture_output=True)
    full = str(tmp_path / "full")
    subprocess.run(cmd(full), cwd=root, check=True, capture_output=True)
    for f in ["w_plus.npy", "w_plus_phase1.npy"]:
        np.testing.assert_array_equal(np.load(os.path.join(killed, f)), np.load(os.path.join(full, f)))
    a, b = np.load(os.path.join(killed, "history.npz")), np.load(os.path.join(full, "history.npz"))
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
