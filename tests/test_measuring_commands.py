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
