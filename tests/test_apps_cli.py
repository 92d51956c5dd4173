"""The application commands as a user runs them: one-line refusals before anything slow, a smoke run
that writes every output, a finished rerun that rewrites nothing, another run's folder refused."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("crossover", "inpaint", "scribble", "style_transfer", "feature_transfer")


def run(command, *args, timeout=600):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", f"experiments.{command}", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    return p, time.perf_counter() - t0


def one_line_error(p):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("command, args, words", [
    ("crossover", ["--x=README.md", "--y=README.md", "--mask=half:left"], "README.md"),
    ("crossover", ["--x=docs/demo_grid.png"], "needs --y, --mask too"),
    ("inpaint", ["--image=docs/demo_grid.png", "--hole=rect:0.9,0.9,0.5,0.5"], "--hole=rect:0.9,0.9,0.5,0.5"),
    ("inpaint", ["--image=docs/demo_grid.png", "--hole=blob:3"], "--hole=blob:3"),
    ("style_transfer", ["--content=docs/demo_grid.png", "--style=/no/such.png", "--mask=half:top"], "/no/such.png"),
    ("feature_transfer", ["--paper", "--smoke"], "exclude each other"),
])
def test_mistakes_end_in_one_line_before_the_generator_loads(command, args, words, tmp_path):
    p, seconds = run(command, f"--out={tmp_path / 'out'}", "--generator=demo-random", *args)
    assert words in one_line_error(p)
    assert seconds < 30, seconds  # the imports, not a generator build or an optimisation
    assert not (tmp_path / "out").exists()


def test_inpaint_smoke_writes_everything_and_a_finished_rerun_rewrites_nothing(tmp_path):
    out = tmp_path / "inpaint"
    p, _ = run("inpaint", "--smoke", f"--out={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("grid.png", "metrics.json", "run.json", "timing.json", "inputs/image.png", "inputs/hole.png",
                 "inputs/truth_image.png", "outputs/composite_0.png", "outputs/composite_1.png", "outputs/w_plus.npy"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timing"]["iterations"] == 6  # one batch (2 fillings): 3 + 3 iterations
    assert len(metrics["measured"]["hole_psnr_per_filling"]) == 2
    before = {n: (out / n).read_bytes() for n in ("metrics.json", "timing.json", "grid.png")}
    p, _ = run("inpaint", "--smoke", f"--out={out}")
    assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout + p.stderr
    assert {n: (out / n).read_bytes() for n in before} == before
    p, _ = run("inpaint", "--smoke", "--seed=3", f"--out={out}")
    assert "--fresh" in one_line_error(p) and "seed" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "inpaint"])
def test_smoke_runs(command, tmp_path):
    out = tmp_path / command
    p, _ = run(command, "--smoke", f"--out={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == command and metrics["measured"]
    assert (out / "grid.png").exists() and os.listdir(out / "outputs")


def test_a_region_without_pixels_is_null_in_metrics_json_not_nan():
    """The scribble command on a generator whose layers 4-6 change every pixel (the StyleGAN v1 fixture)
    has no region away from the scribbles: its PSNR there is NaN, which metrics.json held as the
    non-JSON token NaN (found by an audit); it is null now, and the log says n/a."""
    import json

    import numpy as np

    from experiments import edit_cli

    img = np.zeros((8, 8, 3), np.float32)
    assert np.isnan(edit_cli.region_psnr(img, img + 0.1, np.zeros((8, 8))))
    report = edit_cli._jsonable({"away": np.float32("nan"), "x": float("inf"), "ok": [np.float32(1.5)]})
    assert json.loads(json.dumps(report, allow_nan=False)) == {"away": None, "x": None, "ok": [1.5]}
