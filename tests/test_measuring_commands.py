"""The measuring commands' refusals and record-keeping not covered by their own test files
(experiments.time_algorithm2, step_parts, evaluate_generator, ablation_table, parity_report): a bad
flag or input ends in one line at start-up, before any long work, and leaves no folder behind
(audit C2)."""

import json
import os

import numpy as np
import pytest

from experiments import step_parts
from test_cli import assert_one_line_error, run_cli

ALG2 = ["--resolution=32", "--w_steps=4", "--noise_steps=2", "--resize_to=32", "--warmup_steps=2", "--vgg=random"]


@pytest.mark.parametrize("arg, words", [
    ("--resolution=100", ["--resolution=100", "power of two"]),
    ("--resize_to=0", ["--resize_to=0", ">= 16"]),
    ("--float32_head=-1", ["--float32_head=-1"]),
    ("--float32_tail=1.5", ["--float32_tail=1.5"]),
    ("--float32_tail=nan", ["--float32_tail", "finite"]),
])
def test_time_algorithm2_bounds_its_flags(tmp_path, arg, words):
    p, _ = run_cli("experiments.time_algorithm2", f"--out={tmp_path / 'a2'}", *ALG2, arg)
    assert_one_line_error(p, *words)


def test_time_algorithm2_checks_out_and_vgg_before_timing(tmp_path):
    (tmp_path / "afile").write_text("")
    p, _ = run_cli("experiments.time_algorithm2", f"--out={tmp_path / 'afile' / 'sub'}", *ALG2)
    assert_one_line_error(p, "a file is in the way")
    assert "first call" not in p.stdout  # refused before the warm-up, not after the whole timing
    out = tmp_path / "a2"
    p, _ = run_cli("experiments.time_algorithm2", f"--out={out}", *ALG2, "--vgg=/nonexistent.npz")
    assert_one_line_error(p, "--vgg=/nonexistent.npz", "vgg16_trunk.npz")
    assert not out.exists()


def test_step_parts_bounds_and_out(tmp_path):
    p, _ = run_cli("experiments.step_parts", f"--out={tmp_path / 'sp'}", "--resize_to=8", "--vgg=random")
    assert_one_line_error(p, "--resize_to=8", ">= 16")
    (tmp_path / "afile").write_text("")
    p, _ = run_cli("experiments.step_parts", f"--out={tmp_path / 'afile'}", "--vgg=random")
    assert_one_line_error(p, "a file is in the way")
    p, _ = run_cli("experiments.step_parts", f"--out={tmp_path / 'sp'}", "--vgg=/nonexistent.npz")
    assert_one_line_error(p, "--vgg=/nonexistent.npz", "vgg16_trunk.npz")
    assert not (tmp_path / "sp").exists()


def test_step_parts_times_each_step_before_anything_compiles_it(monkeypatch):
    """Audit C2, finding 18: the "first call s" column is compile + one call in every row; the steps'
    memory report compiled them first, so their first call was only a call."""
    events = []
    monkeypatch.setattr(step_parts, "engine_step", lambda su, kind: (kind, ()))
    monkeypatch.setattr(step_parts, "time_calls", lambda fn, args, rounds: events.append(("time", fn)) or (1.0, 0.1))
    monkeypatch.setattr(step_parts, "_memory", lambda fn, args: events.append(("compile", fn)) or {})
    parts, memory = step_parts.step_rows({}, rounds=2)
    assert events == [("time", "w"), ("compile", "w"), ("time", "noise"), ("compile", "noise")]
    assert set(parts) == set(memory) == {"W+ step", "noise step"}
    events.clear()
    parts, _ = step_parts.step_rows({}, rounds=2, memory_only=True)
    assert parts == {} and events == [("compile", "w"), ("compile", "noise")]
    assert "first call s (compile + one call)" in step_parts.table(
        {"batch": 1, "parts": {"W+ step": {"ms_per_iteration": 2.0, "first_call_s": 1.0}}})


def _user_image_run(out, G) -> None:
    """A finished reconstruct.py run folder of one user's image ("photo": no hidden truth), as it writes it."""
    from i2spp_jax import io

    rng = np.random.default_rng(0)
    d = out / "photo"
    (d / "noise").mkdir(parents=True)
    io.save_image(str(d / "target.png"), rng.uniform(-1, 1, (G.img_resolution, G.img_resolution, 3)))
    np.save(d / "w_plus.npy", np.asarray(G.mapping(rng.normal(size=(1, G.z_dim)).astype(np.float32))[0]))
    for name, shape in zip(G.noise_names, G.noise_shapes):
        np.save(d / "noise" / f"noise_{name}.npy", np.ones(shape, np.float32))
    phase = {"phase": "W_l", "iterations": 3, "psnr": 11.0, "ssim": 0.1}
    metrics = {"config": {"generator": "demo-random", "image": "photo.png", "noise_init": "normal", "seed": 0,
                          "truth_seed": 123, "truth_psi": 1.0},
               "targets": {"photo": {"source": "image photo.png", "per_phase": [phase], "final": phase,
                                     "final_w_plus_with_initial_noise": {"psnr": 9.5, "ssim": 0.05}}}}
    (out / "metrics.json").write_text(json.dumps(metrics))


def test_ablation_table_tabulates_a_user_image_run_without_ground_truth(tmp_path):
    """Audit C2, finding 10: a run of a user's image (no rendered target, no truth) crashed the table."""
    import i2spp_jax
    from experiments import ablation_table

    _user_image_run(tmp_path / "runs" / "mine", i2spp_jax.load_generator("demo-random"))
    (tmp_path / "runs" / "unfinished").mkdir()  # no metrics.json: no row
    lines = ablation_table.table(str(tmp_path / "runs")).splitlines()
    assert len(lines) == 5 and lines[2].startswith("| mine | photo | W_l 3 | 11.00 | 11.00 | 0.1000 | 9.50 | ")
    assert lines[2].endswith(" | – | 1.00 |") and "without ground truth" in lines[4]


@pytest.mark.parametrize("make, words", [(None, ["is not a folder"]), ("mkdir", ["holds no finished reconstruct.py run"])])
def test_ablation_table_refuses_a_folder_without_runs(tmp_path, make, words):
    """Audit C2, finding 10: a missing folder printed an empty table with exit status 0."""
    if make:
        (tmp_path / "runs").mkdir()
    p, _ = run_cli("experiments.ablation_table", str(tmp_path / "runs"))
    assert_one_line_error(p, str(tmp_path / "runs"), *words)


def test_ablation_table_help_is_help():
    """Audit C2, finding 10: --help printed an empty table (of a folder named runs/ablation)."""
    p, _ = run_cli("experiments.ablation_table", "--help")
    assert p.returncode == 0 and "a row per run and target" in p.stdout and "| run |" not in p.stdout, p.stdout


@pytest.mark.parametrize("which", ["v2", "v1"])
def test_evaluate_generator_runs_on_either_generation(monkeypatch, request, which):
    """Audit C2, finding 9: a StyleGAN (v1) generator crashed (its untrained ceiling was built with the
    StyleGAN2 initialiser). Fashion-MNIST is replaced by random images, so this runs without it."""
    import i2spp_jax
    from experiments import evaluate_generator
    from i2spp_jax import datasets

    if which == "v1":
        G = i2spp_jax.load_generator(os.path.join(request.getfixturevalue("tf_dir"), "sg1_r32.pkl"))
    else:
        G = i2spp_jax.load_generator("demo-random")
    rng = np.random.default_rng(0)
    fake = {split: rng.integers(0, 256, (n, G.img_resolution, G.img_resolution, 3), dtype=np.uint8)
            for split, n in (("train", 48), ("test", 40))}
    monkeypatch.setattr(datasets, "fashion_mnist", lambda split, resolution, channels: fake[split])
    result = evaluate_generator.evaluate(G, n=24, n_nn=8, vgg_resolution=32, log=lambda m: None)
    fd = result["frechet_distance"]
    assert all(np.isfinite(v) and v > 0 for v in fd.values()), fd
    assert fd["untrained_vs_real_test (ceiling)"] != fd["generated_vs_real_test"]  # a different network
    assert result["nearest_training_image_distance"]["n"] == 8


@pytest.mark.parametrize("args, words", [
    (["--n=0"], ["--n=0", "[2, 10000]"]),
    (["--n=70000"], ["--n=70000", "[2, 10000]"]),  # more than the test split: numpy's traceback
    (["--n=50"], ["--n_nn must be at most --n"]),
    (["--out={tmp}/afile/sub", "--n=50", "--n_nn=10"], ["a file is in the way"]),  # refused after the whole run
])
def test_evaluate_generator_refuses_bad_flags_at_start_up(tmp_path, args, words):
    (tmp_path / "afile").write_text("")
    p, _ = run_cli("experiments.evaluate_generator", f"--out={tmp_path / 'ev'}",
                   *[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(p, *words)
    assert "Fréchet" not in p.stdout + p.stderr and not (tmp_path / "ev").exists()


def test_parity_report_reports_every_fixture_by_its_format(tmp_path, parity_dir):
    """Audit C2, finding 11: the TensorFlow fixtures were not reported, and the fixtures were found by
    their names (ada_tiny, ada_clamp, rosi_64): a renamed or new fixture was left out."""
    from experiments import parity_report

    d = tmp_path / "parity"
    (d / "tf").mkdir(parents=True)
    for src, dst in (("ada_tiny", "mine_a"), ("rosi_64", "mine_b")):
        for ext in (".weights.npz", ".json", ".reference.npz"):
            os.symlink(os.path.join(parity_dir, src + ext), d / (dst + ext))
    for ext in (".pkl", ".reference.npz"):
        os.symlink(os.path.join(parity_dir, "tf", "sg1_r32" + ext), d / "tf" / ("v1" + ext))
    os.symlink(os.path.join(parity_dir, "tf", "sg2_r32.pkl"), d / "tf" / "no_reference.pkl")
    found = parity_report.fixtures(str(d))
    assert {k: v[0] for k, v in found.items()} == {"mine_a": "ada", "mine_b": "rosinality", "tf/v1": "tf"}
    p, _ = run_cli("experiments.parity_report", f"--parity_dir={d}")
    assert p.returncode == 0, p.stderr[-2000:]
    worst = {line.split(" (")[0]: float(line.split("worst ")[1].split()[0])
             for line in p.stdout.splitlines() if " worst " in line}
    assert worst.keys() == {"mine_a", "mine_b", "tf/v1"} and worst["mine_b"] < 1e-5 and worst["tf/v1"] < 1e-5, p.stdout
    assert "not computed here: D_on_img" in p.stdout


@pytest.mark.parametrize("make, words", [(None, ["is not a folder", "I2SPP_PARITY_DIR"]),
                                         ("mkdir", ["holds no fixture"]),
                                         ("lone", ["lacks x.json or x.reference.npz"])])
def test_parity_report_refuses_a_folder_without_fixtures(tmp_path, make, words):
    """Audit C2, finding 11: a missing folder was a FileNotFoundError traceback."""
    d = tmp_path / "parity"
    if make:
        d.mkdir()
    if make == "lone":
        (d / "x.weights.npz").write_bytes(b"")
    p, _ = run_cli("experiments.parity_report", f"--parity_dir={d}")
    assert_one_line_error(p, *words)
