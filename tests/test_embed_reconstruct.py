"""End-to-end tests of experiments/reconstruct.py (Algorithm 2) with the smoke preset."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from experiments import cli
from experiments import reconstruct as R
from i2spp_jax import checkpoint, io

SHARED = ["grid.png", "curves.png", "metrics.json", "history.npz", "run.json"]
PER_TARGET = ["target.png", "w_result.png", "wn_result.png", "diff.png", "w_plus.npy", "w_plus_phase1.npy",
              "w_plus_phase2.npy"]


def smoke(tmp_path, log=None, fresh=False, **kw):
    cfg = R.ReconstructConfig(out=str(tmp_path / "out"), preset="smoke", vgg="random", w_steps=4, noise_steps=3,
                              log_every=2, **kw)
    lines = []
    return R.reconstruct(cfg, fresh=fresh, log=log or lines.append), lines, cfg.out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_demo_smoke_writes_everything(tmp_path):
    m, lines, out = smoke(tmp_path)
    for f in SHARED:
        assert os.path.exists(os.path.join(out, f)), f
    assert sorted(m["targets"]) == ["real", "rendered"]  # the hidden-latent render and a held-out photo
    for name in ("rendered", "real"):
        for f in PER_TARGET:
            assert os.path.exists(os.path.join(out, name, f)), (name, f)
        assert len(os.listdir(os.path.join(out, name, "noise"))) == 7
        assert np.load(os.path.join(out, name, "w_plus.npy")).shape == (8, 128)
    assert os.path.exists(os.path.join(out, "rendered", "truth_w_plus.npy"))
    assert not os.path.exists(os.path.join(out, "real", "truth_w_plus.npy"))
    saved = json.load(open(os.path.join(out, "metrics.json")))
    rendered = saved["targets"]["rendered"]
    assert [q["phase"] for q in rendered["per_phase"]] == ["W_l", "Mk_n"]
    assert rendered["final"]["psnr"] == pytest.approx(m["targets"]["rendered"]["final"]["psnr"])
    assert 5 < rendered["final"]["psnr"] < 60 and "w_plus_rmse_vs_hidden" in rendered["truth"]
    assert "truth" not in saved["targets"]["real"] and "test" in saved["targets"]["real"]["source"]
    assert saved["vgg_resolution"] == 32  # smoke: the generator's own resolution
    # the real target is the shipped held-out image, converted to RGB
    real = np.asarray(Image.open(os.path.join(out, "real", "target.png")))
    held = np.asarray(Image.open(checkpoint.heldout_images()[0]))
    np.testing.assert_array_equal(real[..., 0], held)
    h = np.load(os.path.join(out, "history.npz"))
    assert h["psnr"].shape == (7, 2) and h["phase"].tolist() == [0] * 4 + [1] * 3
    assert any("PSNR" in line and "it/s" in line for line in lines)
    # one session of 7 iterations, timed once
    timing = json.load(open(os.path.join(out, "timing.json")))
    assert timing["finished"] and [s["iterations"] for s in timing["sessions"]] == [7]
    assert saved["seconds"] == timing["sessions"][0]["seconds"] > 0
    assert saved["iterations_per_second"] == pytest.approx(7 / saved["seconds"])
    # a rerun finds the run finished: it says so in one line, returns the stored metrics, rewrites nothing
    files = {f: read(os.path.join(out, f)) for f in SHARED + ["timing.json"]}
    m2, lines2, _ = smoke(tmp_path)
    assert [line for line in lines2 if "finished" in line] == lines2[-1:] and "nothing rewritten" in lines2[-1]
    assert m2["targets"] == m["targets"] and m2["seconds"] == saved["seconds"]
    assert {f: read(os.path.join(out, f)) for f in files} == files


def test_resumed_run_keeps_the_time_of_what_ran(tmp_path):
    """A session stopped after phase 1 and its resume: metrics.json times the resumed session's own
    iterations (the stopped session's time is not known, so it is not counted), not the whole run."""

    class Stop(Exception):
        pass

    def stop_after_phase_1(line):
        if line.startswith("phase 1"):  # its checkpoint (iteration 4) is on disk
            raise Stop

    with pytest.raises(Stop):
        smoke(tmp_path, log=stop_after_phase_1)
    out = str(tmp_path / "out")
    assert not os.path.exists(os.path.join(out, "timing.json")) and not os.path.exists(os.path.join(out, "metrics.json"))
    m, lines, _ = smoke(tmp_path)
    sessions = m["timing"]["sessions"]
    assert [s["iterations"] for s in sessions] == [3] and m["timing"]["iterations_total"] == 7
    assert m["seconds"] == sessions[0]["seconds"] and m["iterations_per_second"] == pytest.approx(3 / m["seconds"])
    assert np.load(os.path.join(out, "history.npz"))["phase"].tolist() == [0] * 4 + [1] * 3


def test_user_image_converted_with_messages(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (50, 80, 4), dtype=np.uint8); a[..., 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "in.png")
    m, lines, out = smoke(tmp_path, image=str(tmp_path / "in.png"), schedule="w_only")
    assert any("centre-cropped from 80x50 to 50x50" in line for line in lines)
    assert any("resized from 50x50 to 32x32" in line for line in lines)
    assert os.path.exists(os.path.join(out, "in", "phase1_W_l.png")) and list(m["targets"]) == ["in"]
    assert "truth" not in m["targets"]["in"]
    assert Image.open(os.path.join(out, "in", "target.png")).size == (32, 32)


def test_another_image_into_an_existing_out_is_refused(tmp_path):
    """The new-user bug: a second --image into the same --out must not resume the first one's run."""
    for name, seed in (("a.png", 0), ("b.png", 1)):
        a = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / name)
    smoke(tmp_path, image=str(tmp_path / "a.png"), schedule="w_only")
    before = np.load(os.path.join(tmp_path, "out", "a", "w_plus.npy"))
    with pytest.raises(cli.UserError, match="other targets"):
        smoke(tmp_path, image=str(tmp_path / "b.png"), schedule="w_only")
    with pytest.raises(cli.UserError, match="other settings \\(w_lr\\); rerun with --fresh"):
        smoke(tmp_path, image=str(tmp_path / "a.png"), schedule="w_only", w_lr=0.02)
    np.testing.assert_array_equal(np.load(os.path.join(tmp_path, "out", "a", "w_plus.npy")), before)
    assert not os.path.exists(os.path.join(tmp_path, "out", "b"))
    # fresh: the old run moves aside, whole, and the new one starts in --out
    m, _, out = smoke(tmp_path, image=str(tmp_path / "b.png"), schedule="w_only", fresh=True)
    (old,) = [d for d in os.listdir(tmp_path) if d.startswith("out.old-")]
    np.testing.assert_array_equal(np.load(os.path.join(tmp_path, old, "a", "w_plus.npy")), before)
    assert list(m["targets"]) == ["b"] and not os.path.exists(os.path.join(out, "a"))


def test_corrupt_image_refused(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(io.ImageError, match="bad.jpg"):
        smoke(tmp_path, image=str(tmp_path / "bad.jpg"))


def test_presets():
    assert R.PRESETS["paper"] == (5000, 3000, 256)
    class G:  # noqa: D401 - a stand-in with the one attribute _resolve reads
        img_resolution = 1024
    assert R._resolve(R.ReconstructConfig(generator="ckpt/ffhq"), G)[:4] == ("paper", 5000, 3000, 256)
    G.img_resolution = 32
    assert R._resolve(R.ReconstructConfig(), G) == ("demo", 600, 600, 64)


@pytest.mark.slow  # end to end: a killed process and its resume
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
    assert not os.path.exists(os.path.join(killed, "rendered", "wn_result.png"))
    subprocess.run(cmd(killed), cwd=root, check=True, capture_output=True)
    full = str(tmp_path / "full")
    subprocess.run(cmd(full), cwd=root, check=True, capture_output=True)
    for f in ["rendered/w_plus.npy", "rendered/w_plus_phase1.npy", "real/w_plus.npy"]:
        np.testing.assert_array_equal(np.load(os.path.join(killed, f)), np.load(os.path.join(full, f)))
    a, b = np.load(os.path.join(killed, "history.npz")), np.load(os.path.join(full, "history.npz"))
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
