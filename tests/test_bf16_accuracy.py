"""experiments.bf16_accuracy: the float32 row is reconstruct's W+ phase bit for bit; the control only
changes rounding; finished runs are kept and reread; other settings are refused."""

import json
import os

import pytest

from experiments import bf16_accuracy as A
from experiments import cli
from experiments import reconstruct as R

SETTINGS = A.Settings(w_steps=6, resize_to=32, head=0.5, tail=0.2, switch_db=-100.0)  # the switch after iteration 0


def test_sweep_rows_resume_and_refusal(tmp_path):
    out = str(tmp_path / "acc")
    lines = []
    text, summary = A.sweep(out, SETTINGS, [0], ["float32_rounding", "bfloat16_head", "bfloat16_switch", "bfloat16_auto", "bfloat16_head_auto"], vgg="random",
                            log=lines.append)
    runs = {r["variant"]: r for r in json.load(open(os.path.join(out, "summary.json")))["runs"]}
    assert list(runs) == ["float32", "float32_rounding", "bfloat16_head", "bfloat16_switch", "bfloat16_auto",
                          "bfloat16_head_auto"]
    # iterations in bf16: 6 less a head of 3 and a tail of 1; the switch's first iteration alone; auto, 10 dB
    # under the demo's bf16 floor (about 46 dB), none of 6 iterations reaches it
    assert [runs[v]["bf16_iterations"] for v in runs] == [0, 0, 2, 1, 5, 2]
    assert "float32_above_db=3" in runs["bfloat16_auto"]["phase"] and "float32_head_steps=3" in runs["bfloat16_head_auto"]["phase"]
    assert "float32_head_steps=3" in runs["bfloat16_head"]["phase"] and "float32_steps=1" in runs["bfloat16_head"]["phase"]
    assert runs["float32"]["up_method"] != runs["float32_rounding"]["up_method"]
    for name in ("rendered", "real"):
        ref = runs["float32"]["psnr"][name]
        # the control: other rounding, the same optimisation
        assert runs["float32_rounding"]["psnr"][name] != ref
        assert abs(runs["float32_rounding"]["psnr"][name] - ref) < 0.05
        assert summary[name]["bfloat16_head"]["deltas"] == [runs["bfloat16_head"]["psnr"][name] - ref]
    assert "| 0 | rendered |" in text and "| mean / worst | real |" in text

    # the float32 row is reconstruct's W+ phase with --noise_steps=0, seed 0, truth seed 123
    cfg = R.ReconstructConfig(out=str(tmp_path / "rec"), vgg="random", w_steps=6, noise_steps=0, resize_to=32,
                              seed=0, truth_seed=123, log_every=0)
    m = R.reconstruct(cfg, log=lambda _: None)
    for name in ("rendered", "real"):
        assert m["targets"][name]["per_phase"][0]["psnr"] == pytest.approx(runs["float32"]["psnr"][name], abs=1e-6)

    # again: the finished runs are read back, not run
    lines.clear()
    again, _ = A.sweep(out, SETTINGS, [0], ["float32_rounding", "bfloat16_head", "bfloat16_switch", "bfloat16_auto", "bfloat16_head_auto"], vgg="random", log=lines.append)
    assert again == text and not [line for line in lines if "seed 0:" in line]
    with pytest.raises(cli.UserError, match="w_steps"):
        A.sweep(out, A.Settings(w_steps=7, resize_to=32, head=0.5, tail=0.2, switch_db=-100.0), [0], [], vgg="random")
    with pytest.raises(cli.UserError, match="torgb_method"):  # another ToRGB form is another sweep
        A.sweep(out, A.Settings(**{**SETTINGS.__dict__, "torgb_method": "reduce"}), [0], [], vgg="random")
    assert {r["torgb_method"] for r in runs.values()} == {"conv"}
    # the default "auto" is the convolution for every variant off a GPU: recorded as conv, so a sweep
    # from before "auto" (conv the default, no torgb_method in run.json) and an explicit conv resume it
    assert "torgb_method" not in json.load(open(os.path.join(out, "run.json")))["settings"]
    lines.clear()
    A.sweep(out, A.Settings(**{**SETTINGS.__dict__, "torgb_method": "conv"}), [0], [], vgg="random", log=lines.append)
    assert not [line for line in lines if "seed 0:" in line]
    with pytest.raises(cli.UserError, match="unknown bf16"):
        A.sweep(out, SETTINGS, [0], ["bf16"], vgg="random")


def test_summary_holds_every_finished_run_of_the_folder(tmp_path):
    """Audit C2, finding 14: a later command with fewer variants rewrote summary.json with its own runs only."""
    out = str(tmp_path / "acc")
    s = A.Settings(w_steps=2, resize_to=32)
    A.sweep(out, s, [0], ["bfloat16"], vgg="random", log=lambda _: None)
    text, summary = A.sweep(out, s, [0], ["float32"], vgg="random", log=lambda _: None)
    saved = json.load(open(os.path.join(out, "summary.json")))
    assert [r["variant"] for r in saved["runs"]] == ["float32", "bfloat16"] and saved["variants"] == ["float32", "bfloat16"]
    assert "bfloat16" in summary["rendered"] and "| bfloat16 |" in text.splitlines()[1]


def test_a_refused_input_leaves_no_folder(tmp_path):
    """Audit C2, finding 14: a missing --vgg (or generator) left run.json behind, and the corrected command
    was then refused as "a run with other settings"."""
    out = tmp_path / "acc"
    with pytest.raises(cli.UserError, match="--vgg=/nonexistent.npz.*vgg16_trunk.npz"):
        A.sweep(str(out), A.Settings(w_steps=2, resize_to=32), [0], ["float32"], vgg="/nonexistent.npz")
    with pytest.raises(FileNotFoundError, match="no generator"):
        A.sweep(str(out), A.Settings(generator="/nonexistent", w_steps=2, resize_to=32), [0], ["float32"],
                vgg="random")
    assert not out.exists()


def test_a_stylegan1_generator_runs_every_variant_but_the_rounding_control(tf_dir, tmp_path):
    """Audit C2, finding 9: it crashed on Generator-only settings (torgb_method, up_method)."""
    pkl = os.path.join(tf_dir, "sg1_r32.pkl")
    notes = []
    G, variants = A.load_generator(A.Settings(generator=pkl), ["float32", "float32_rounding", "bfloat16"], notes.append)
    assert G.generation == 1 and variants == ["float32", "bfloat16"] and "float32_rounding left out" in notes[0]
    with pytest.raises(cli.UserError, match="--torgb_method=matmul.*StyleGAN \\(v1\\)"):
        A.load_generator(A.Settings(generator=pkl, torgb_method="matmul"), ["float32"])
    out = str(tmp_path / "acc")
    _, summary = A.sweep(out, A.Settings(generator=pkl, w_steps=2, resize_to=32), [0], ["float32_rounding"],
                         vgg="random", log=notes.append)
    assert summary == {"rendered": {}}  # float32 alone (a rendered target; no photograph off the demo)
    assert os.path.exists(os.path.join(out, "runs", "float32_s0", "result.json"))


@pytest.mark.parametrize("arg", ["--seeds=-1", "--seeds=abc", "--percept=nan", "--percept=-1"])
def test_bad_flags_are_one_line(tmp_path, arg):
    from test_cli import assert_one_line_error, run_cli

    p, _ = run_cli("experiments.bf16_accuracy", f"--out={tmp_path / 'acc'}", "--vgg=random", "--w_steps=2", arg)
    assert_one_line_error(p, arg.split("=")[0])
    assert not (tmp_path / "acc").exists()
