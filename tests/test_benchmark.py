"""experiments/benchmark.py: the table and record it writes, the torch VGG trunk of its official
side (the same features as the project's VGG16, so that both sides compute one loss), and its
one-line refusals. The official generator itself needs a stylegan2-ada-pytorch checkout, which CI
does not have: BUILD_NOTES.md records the side-by-side runs."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import benchmark, benchmark_official
from i2spp_jax import host_memory
from i2spp_jax import vgg as vgg_lib
from test_cli import assert_one_line_error, run_cli

TINY = ["--resolution=16", "--channel_base=128", "--channel_max=16", "--w_dim=16", "--mapping_layers=2",
        "--iters=2", "--rounds=2", "--warmup=1", "--resize_to=32", "--vgg=random"]


@pytest.mark.slow  # an end-to-end run (60-75 s on the 2-core CPU): `pytest -m slow`
def test_jax_side_alone_writes_the_table_and_record(tmp_path):
    out = str(tmp_path / "bench")
    p, _ = run_cli("experiments.benchmark", f"--out={out}", "--batches=1,2", *TINY, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "official skipped: no --torch_repo given" in p.stdout
    rows = [line for line in p.stdout.splitlines() if line.startswith("| W+ step") or line.startswith("| noise step")]
    assert len(rows) == 4, p.stdout
    rec = json.load(open(os.path.join(out, "benchmark.json")))
    assert [(r["step"], r["batch"]) for r in rec["rows"]] == [("w", 1), ("w", 2), ("noise", 1), ("noise", 2)]
    for batch in ("1", "2"):
        jax_rec = rec["records"][batch]["jax"]
        assert jax_rec["peak_memory_bytes"] > 0 and jax_rec["backend"] == "cpu"
        for kind in ("w", "noise"):
            step = jax_rec["steps"][kind]
            assert len(step["rounds"]) == 2 and all(r > 0 for r in step["img_it_s"])
            # every round restarts from the same variables: the same first loss
            assert step["rounds"][0]["loss_first"] == step["rounds"][1]["loss_first"]
        w = jax_rec["steps"]["w"]["rounds"][-1]  # and W+ at lr 0.01 lowers it within two iterations
        assert np.all(np.array(w["loss_last"]) < np.array(w["loss_first"]))
    assert rec["settings"]["sides"] == ["jax"] and rec["inputs"]["vgg_source"].startswith("random")
    # the command's process keeps host memory exactly where this test process (conftest) does
    assert rec["records"]["1"]["jax"]["host_memory"] == host_memory.describe()


def test_the_official_side_keeps_glibc_defaults_unless_asked():
    """The project's processes keep freed host memory (as its commands do); the official side runs as
    its users run it, unless --official_host_memory=kept."""
    assert benchmark._keeps_host_memory(["-m", "--role=jax", "--batch=1"])
    assert benchmark._keeps_host_memory(["-m"])  # the driving process
    assert not benchmark._keeps_host_memory(["-m", "--role=official", "--batch=1"])
    assert benchmark._keeps_host_memory(["-m", "--official_host_memory=kept", "--role=official"])
    assert benchmark._keeps_host_memory(["-m", "--official_host_memory", "kept", "--role=official"])
    assert not benchmark._keeps_host_memory(["-m", "--official_host_memory", "default", "--role=official"])


def test_torch_vgg_trunk_equals_the_projects_vgg():
    torch = pytest.importorskip("torch")
    vgg = vgg_lib.random_vgg16(jax.random.PRNGKey(3))
    params = {n: {k: np.asarray(v) for k, v in vgg.params[n].items()} for n in benchmark.VGG_TRUNK_LAYERS}
    img = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 3), minval=-1, maxval=1))
    want = vgg.features(img, benchmark_official.PERCEPTUAL_LAYERS)
    got = benchmark_official.TorchVGG(params, torch.device("cpu")).features(
        torch.from_numpy(img.transpose(0, 3, 1, 2).copy()))
    for name in benchmark_official.PERCEPTUAL_LAYERS:
        g = got[name].numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(g, np.asarray(want[name]), rtol=1e-4, atol=1e-4 * np.abs(g).max())


@pytest.mark.parametrize("args, words", [
    (["--torch_repo=/nonexistent"], ["--torch_repo=/nonexistent", "training/networks.py"]),
    (["--sides=pytorch"], ["--sides", "pytorch"]),
    (["--batches=0"], ["--batches", ">= 1"]),
    (["--numerics=bf16", "--torch_repo=/any"], ["--numerics=bf16", "--sides=jax"]),
])
def test_refusals_are_one_line(tmp_path, args, words):
    p, _ = run_cli("experiments.benchmark", f"--out={tmp_path}", *TINY, *args)
    assert_one_line_error(p, *words)


@pytest.mark.slow  # an end-to-end run (60-75 s on the 2-core CPU): `pytest -m slow`
def test_gpu_path_flags_carried_vgg_trunk_and_multi_step_dispatch(tmp_path):
    """What experiments/configs/gpu_benchmark.sh uses off the CPU: a carried vgg16_trunk.npz as --vgg
    (the same weights as the run that wrote it), --steps_per_call (the scan path), the methods' flags
    and --compilation_cache (the project's side keeps its compiled programs there)."""
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    args = [a for a in TINY if not a.startswith(("--vgg", "--warmup"))] + ["--warmup=2", "--batches=1", "--steps=w",
                                                                          "--sides=jax"]
    p, _ = run_cli("experiments.benchmark", f"--out={first}", "--vgg=random", *args, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    trunk = os.path.join(first, "vgg16_trunk.npz")
    cache = tmp_path / "xla"
    os.makedirs(second)
    with open(os.path.join(second, "benchmark.json"), "w") as f:  # an earlier run's table: kept beside the new one
        json.dump({"earlier": True}, f)
    p, _ = run_cli("experiments.benchmark", f"--out={second}", f"--vgg={trunk}", "--steps_per_call=2",
                   "--up_method=polyphase", "--torgb_method=matmul", f"--compilation_cache={cache}", *args,
                   timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(second, "benchmark.json")))
    kept = [n for n in os.listdir(second) if n.startswith("benchmark.") and n != "benchmark.json"]
    assert len(kept) == 1 and json.load(open(os.path.join(second, kept[0]))) == {"earlier": True}
    assert rec["inputs"]["vgg_source"] == f"trunk file {trunk}"
    assert rec["records"]["1"]["jax"]["steps_per_call"] == 2
    assert rec["records"]["1"]["jax"]["up_method"] == "polyphase" and "up-sampling polyphase" in p.stdout
    assert rec["records"]["1"]["jax"]["torgb_method"] == "matmul" and "ToRGB matmul" in p.stdout
    assert rec["settings"]["compilation_cache"] == str(cache) and any(f.startswith("jit_run") for f in os.listdir(cache))
    with np.load(trunk) as a, np.load(os.path.join(second, "vgg16_trunk.npz")) as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    # the same weights and start: the scan path's first loss (polyphase up-sampling and ToRGB products:
    # the same function) equals the single-step run's
    one = json.load(open(os.path.join(first, "benchmark.json")))["records"]["1"]["jax"]["steps"]["w"]["rounds"][0]
    two = rec["records"]["1"]["jax"]["steps"]["w"]["rounds"][0]
    np.testing.assert_allclose(two["loss_first"], one["loss_first"], rtol=1e-5)
    p, _ = run_cli("experiments.benchmark", f"--out={second}", "--steps_per_call=3", *args)
    assert_one_line_error(p, "--steps_per_call=3", "divisor")


@pytest.mark.slow  # an end-to-end run of a command: `pytest -m slow`
def test_step_parts_times_each_part_and_writes_a_record(tmp_path):
    """experiments/step_parts.py: the W+ step's parts alone, and the whole steps, on the benchmark's CPU
    sizes (a small VGG resolution to keep it short)."""
    p, _ = run_cli("experiments.step_parts", f"--out={tmp_path}", "--preset=cpu", "--resize_to=32", "--rounds=1",
                   "--vgg=random", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(tmp_path, "step_parts.json")))
    assert list(rec["parts"]) == ["G forward", "G forward + backward", "VGG forward + backward", "W+ step",
                                  "noise step"]
    assert all(v["ms_per_iteration"] > 0 for v in rec["parts"].values())
    assert rec["resolution"] == 256 and rec["batch"] == 1 and "| W+ step |" in p.stdout


@pytest.mark.slow  # an end-to-end run of a command: `pytest -m slow`
def test_step_parts_memory_only_reports_the_compiled_buffers(tmp_path):
    with open(tmp_path / "step_parts.json", "w") as f:  # an earlier run's record: kept, not overwritten
        json.dump({"earlier": True}, f)
    p, _ = run_cli("experiments.step_parts", f"--out={tmp_path}", "--preset=cpu", "--resize_to=32", "--vgg=random",
                   "--memory_only", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(tmp_path, "step_parts.json")))
    assert rec["parts"] == {} and set(rec["memory_mb"]) == {"W+ step", "noise step"}
    w = rec["memory_mb"]["W+ step"]
    assert w["temp"] > 0 and w["argument"] > 0 and "W+ step: arguments" in p.stdout
    kept = [n for n in os.listdir(tmp_path) if n.startswith("step_parts.") and n != "step_parts.json"]
    assert len(kept) == 1 and json.load(open(tmp_path / kept[0])) == {"earlier": True}, os.listdir(tmp_path)
    assert f"as {kept[0]}" in p.stdout


@pytest.mark.slow  # an end-to-end run of a command: `pytest -m slow`
def test_time_algorithm2_runs_both_phases_and_reports_seconds_per_image(tmp_path):
    """experiments/time_algorithm2.py (issue 9's "Algorithm 2 in at most 30 s per image"): one embed() with
    the W+ phase then the noise phase, in the bf16 mode with its float32 tail, after an untimed warm-up.
    The targets are the random generator's renders (noise strengths > 0), so the noise phase must raise
    the PSNR the W+ phase reached."""
    p, _ = run_cli("experiments.time_algorithm2", f"--out={tmp_path}", "--resolution=32", "--resize_to=32",
                   "--batch=2", "--w_steps=40", "--noise_steps=40", "--warmup_steps=10", "--vgg=random",
                   "--compute_dtype=bfloat16", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.load(open(os.path.join(tmp_path, "algorithm2.json")))
    assert rec["iterations_run"] == 80 and rec["float32_tail"] == 0.1 and rec["compute_dtype"] == "bfloat16"
    above = rec["float32_above_db"]  # "auto", resolved: 10 dB under bf16's floor, the same in both phases
    assert len(above) == 2 and above[0] == above[1] and 20 < above[0] < 60, above
    # at most the 32 iterations between the float32 head and tail of each 40-iteration phase ran in bf16
    assert len(rec["low_dtype_iterations"]) == 2 and all(0 <= k <= 32 for k in rec["low_dtype_iterations"]), rec
    assert rec["seconds_per_image"] == pytest.approx(rec["wall_s"] / 2) and rec["compile_and_warmup_s"] > 0
    w, n = (np.asarray(rec["psnr_db"][k]) for k in ("W+ phase", "noise phase"))
    assert w.shape == n.shape == (2,) and np.all(n > w + 3), (w, n)
    assert "s per image" in p.stdout


@pytest.mark.parametrize("side,in_ch,out_ch", [(5, 3, 4), (8, 6, 5)])
def test_upsample_levers_compute_the_reference_up_convolution(side, in_ch, out_ch):
    """experiments/upsample_levers.py: its fir_2d and polyphase variants are ops.conv2d_up2, so that its
    timings compare the same function; a wrong phase split or FIR padding differs by O(1)."""
    import jax.numpy as jnp

    from experiments import upsample_levers
    from i2spp_jax import ops

    f = ops.setup_filter([1, 3, 3, 1])
    x = jax.random.normal(jax.random.PRNGKey(0), (2, side, side, in_ch))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, in_ch, out_ch))
    ref = ops.conv2d_up2(x, w, f)
    assert ref.shape == (2, 2 * side, 2 * side, out_ch)
    for variant in ("fir_2d", "polyphase"):
        np.testing.assert_allclose(upsample_levers.up_conv(variant, x, w, f), ref, atol=2e-5 * float(jnp.abs(ref).max()),
                                   err_msg=variant)
    # per axis: each output phase reads 3 input taps (a 3x3 kernel), and each kernel tap meets every
    # other FIR tap of [1, 3, 3, 1] / 8 x 2 (gain 4 over two axes), which sum to 1
    taps = ops.up2_phase_taps(3, tuple(float(v) for v in f))
    assert taps.shape == (2, 3, 3)
    np.testing.assert_allclose(taps.sum(axis=1), np.ones((2, 3)))


def test_upsample_levers_table_on_one_layer():
    from experiments import upsample_levers

    rec = upsample_levers.measure("cpu", 1, "fp32", rounds=1, min_side=256)
    assert [(r["side"], r["in_channels"], r["out_channels"]) for r in rec["layers"]] == [(256, 64, 32)]
    for v in upsample_levers.VARIANTS:
        m = rec["layers"][0]["variants"][v]
        assert m["ms_forward"] > 0 and m["ms_forward_input_grad"] > 0 and m["max_abs_diff"] < 1e-4
    lines = upsample_levers.table(rec).splitlines()
    assert lines[2].startswith("| 256 | 64 → 32 |") and lines[-1].startswith("| all |")


def test_the_commands_up_methods_are_the_generators():
    """--up_method's choices (written out in experiments.benchmark, which imports JAX late) are
    networks.UP_METHODS: a method added to the generator reaches the commands that time it."""
    from experiments import benchmark
    from i2spp_jax import networks, ops

    assert benchmark.UP_METHODS == networks.UP_METHODS
    assert benchmark.TORGB_METHODS == networks.TORGB_METHODS
    assert benchmark.EPILOGUE_GRADS == ops.EPILOGUE_GRADS


def test_the_gpu_script_parts_the_readme_names_exist():
    """Every `gpu_benchmark.sh OUT PART` (or `... OUT PART`) in README.md is a part the script runs, so a
    user on a lent GPU does not start a command that does nothing."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = open(os.path.join(root, "experiments", "configs", "gpu_benchmark.sh")).read()
    parts = set(re.findall(r'"\$PART" = (\w+)', script))
    named = set(re.findall(r"(?:gpu_benchmark\.sh|\.\.\.) OUT (\w+)", open(os.path.join(root, "README.md")).read()))
    assert named and named <= parts, sorted(named - parts)


def test_xla_memory_summary_names_the_largest_module_first(tmp_path):
    """experiments/configs/xla_memory_summary.py (the GPU script's alg2_diag): one line per module of an
    XLA dump, largest total first, with the module's file stem (which the script gzips) and its
    largest buffers by size, read from XLA's memory-usage reports (the CPU's format, as a dry run
    writes it; the GPU's differs in the stem only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("xla_memory_summary", os.path.join(
        os.path.dirname(__file__), "..", "experiments", "configs", "xla_memory_summary.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def report(stem, total, rows):
        lines = ["Memory Space: default (color=0)", f"Total bytes: {total} (x)",
                 "  cumulative_size;       size;       offset; used_by_n_values; shapes_list",
                 "  " + "-" * 60]
        lines += [f"    {c}(  4%);    {size};      0;                1; {shape}" for c, size, shape in rows]
        (tmp_path / f"{stem}-memory-usage-report.txt").write_text("\n".join(lines) + "\n")

    report("module_0001.jit_small.sm_9.0_gpu_after_optimizations", 2**20, [("1.00MiB", "1.00MiB", "f32[512,512]")])
    report("module_0002.jit_run.sm_9.0_gpu_after_optimizations", 3 * 2**30,
           [("100.0KiB", "100.0KiB", "f32[25600]"), ("512.1MiB", "512.0MiB", "bf16[8,1024,1024,32]"),
            ("2.50GiB", "2.00GiB", "f32[8,1024,1024,64]")])  # XLA lists them by offset, not by size
    (tmp_path / "module_0002.jit_run.sm_9.0_gpu_after_optimizations.txt").write_text("HloModule jit_run\n")
    lines = mod.summarise(str(tmp_path), top=2)
    assert len(lines) == 2
    assert lines[0].split()[:3] == ["3.00", "GiB", "module_0002.jit_run.sm_9.0_gpu_after_optimizations"], lines
    assert "2.00GiB f32[8,1024,1024,64] | 512.0MiB bf16[8,1024,1024,32]" in lines[0] and "f32[25600]" not in lines[0]
    assert lines[1].split()[2] == "module_0001.jit_small.sm_9.0_gpu_after_optimizations"
    assert os.path.exists(tmp_path / (lines[0].split()[2] + ".txt"))  # the stem the script gzips


# ----------------------------------------------------------------------------------------------
# Bad flags and inputs: one line at start-up, and nothing left in --out (audit C2, findings 4, 7, 8, 13, 16).

SMALL = [a for a in TINY if not a.startswith("--vgg")] + ["--batches=1", "--sides=jax"]


@pytest.mark.parametrize("arg, words", [
    ("--batches=abc", ["--batches=abc", "whole numbers"]),
    ("--batches=", ["--batches=", "whole numbers"]),
    ("--rounds=-1", ["--rounds=-1"]),
    ("--iters=-3", ["--iters=-3"]),
    ("--warmup=-2", ["--warmup=-2"]),
    ("--resize_to=0", ["--resize_to=0", ">= 16"]),
    ("--resolution=100", ["--resolution=100", "power of two"]),
    ("--resolution=-32", ["--resolution=-32"]),
    ("--channel_max=-1", ["--channel_max=-1"]),
    ("--steps_per_call=0", ["--steps_per_call=0"]),
])
def test_numeric_flags_are_bounded(tmp_path, arg, words):
    out = tmp_path / "bench"
    p, _ = run_cli("experiments.benchmark", f"--out={out}", *SMALL, "--vgg=random", arg)
    assert_one_line_error(p, *words)
    assert not out.exists()


def test_out_with_a_file_in_the_way_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        p, _ = run_cli("experiments.benchmark", f"--out={out}", *SMALL, "--vgg=random")
        assert_one_line_error(p, f"--out={out}", "a file is in the way")


@pytest.mark.parametrize("vgg", ["/nonexistent.npz", "/nonexistent.onnx"])
def test_a_bad_vgg_names_the_flag_and_the_trunk_and_leaves_no_out(tmp_path, vgg):
    out = tmp_path / "bench"
    p, _ = run_cli("experiments.benchmark", f"--out={out}", *SMALL, f"--vgg={vgg}")
    assert_one_line_error(p, f"--vgg={vgg}", "vgg16_trunk.npz")
    assert not out.exists()
    (tmp_path / "foreign.npz").write_bytes(b"not an npz")
    p, _ = run_cli("experiments.benchmark", f"--out={out}", *SMALL, f"--vgg={tmp_path / 'foreign.npz'}")
    assert_one_line_error(p, "--vgg=", "not a VGG16 trunk")
    assert not out.exists()


def _checkout(root, custom_ops="", without=()):
    """A stand-in for a stylegan2-ada-pytorch checkout: the files the official side imports."""
    for part in benchmark_official.CHECKOUT_PARTS:
        if not part.startswith(without):
            os.makedirs(root / os.path.dirname(part), exist_ok=True)
            (root / part).write_text(custom_ops if part.endswith("custom_ops.py") else "")
    return root


def test_torch_repo_must_be_the_whole_checkout(tmp_path):
    repo = _checkout(tmp_path / "repo", without=("dnnlib", "torch_utils"))  # training/ copied alone
    p, _ = run_cli("experiments.benchmark", f"--out={tmp_path / 'o'}", *SMALL, "--vgg=random", f"--torch_repo={repo}",
                   "--sides=jax,official")
    assert_one_line_error(p, f"--torch_repo={repo}", "torch_utils/custom_ops.py", "dnnlib/util.py", "whole checkout")
    assert "training/networks.py" not in p.stderr and not (tmp_path / "o").exists()


def test_a_failed_child_process_is_one_line_with_its_error_first(tmp_path):
    pytest.importorskip("torch")
    repo = _checkout(tmp_path / "repo", custom_ops='raise ImportError("a broken checkout")\n')
    out = tmp_path / "o"
    p, _ = run_cli("experiments.benchmark", f"--out={out}", *SMALL, "--vgg=random", f"--torch_repo={repo}",
                   "--sides=jax,official")
    log = out / "weights_stderr.txt"
    assert_one_line_error(p, "making the official generator failed: ImportError: a broken checkout",
                          f"(its whole log: {log})")
    assert "Traceback" in log.read_text()  # the whole traceback is kept there


def test_child_failure_puts_the_last_error_line_first():
    log = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    ^^^^\nValueError: num_steps must be >= 0\n"
    e = benchmark.child_failure("the jax process (batch 1)", log, "/o/jax_b1_stderr.txt")
    assert str(e) == "the jax process (batch 1) failed: ValueError: num_steps must be >= 0 (its whole log: " \
                     "/o/jax_b1_stderr.txt)"
    assert "failed: bad flag (" in str(benchmark.child_failure("x", "noise\nerror: bad flag\n", "p"))
