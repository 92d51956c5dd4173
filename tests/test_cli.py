"""experiments/cli.py: one-line refusals, inputs checked before the generator, one run per folder,
and the run's time kept across sessions."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from experiments import cli
from i2spp_jax import checkpoint
from i2spp_jax.io import ImageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0


def assert_one_line_error(p, *words):
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------------------------
# The run folder.


def test_prepare_out_new_resume_refuse_fresh(tmp_path):
    out = str(tmp_path / "x")
    fp = {"settings": {"w_steps": 10, "seed": 0}, "phases": ["W_l(10)"]}
    img = np.zeros((4, 4, 3), np.float32)
    arrays = {"targets": {"a": img}, "masks": {"m": np.ones((4, 4, 1))}}
    assert cli.prepare_out(out, fp, arrays=arrays, fresh=False, log=print) is False
    saved = json.load(open(os.path.join(out, cli.RUN_FILE)))
    assert saved["settings"] == fp["settings"] and set(saved["targets"]) == {"a"} and set(saved["masks"]) == {"m"}
    assert cli.prepare_out(out, fp, arrays=arrays, fresh=False) is True  # the same run: resume
    open(os.path.join(out, "result.npy"), "w").write("kept")

    other = {"settings": {"w_steps": 20, "seed": 1}, "phases": ["W_l(20)"]}
    other_arrays = {"targets": {"a": img + 1}, "masks": arrays["masks"]}
    with pytest.raises(cli.UserError) as e:
        cli.prepare_out(out, other, arrays=other_arrays, derived=("phases",), fresh=False)
    assert str(e.value) == (f"{out} holds a run with other targets (a) and other settings (seed, w_steps); "
                            f"rerun with --fresh to move it aside to {out}.old-<time> and start over, "
                            "or choose another --out")
    with pytest.raises(cli.UserError, match=r"other masks \(m\); rerun"):  # a mask differs, nothing else
        cli.prepare_out(out, fp, arrays={"targets": arrays["targets"], "masks": {"m": np.zeros((4, 4, 1))}},
                        fresh=False)
    with pytest.raises(cli.UserError, match=r"other settings \(phases\)"):  # derived, named when alone
        cli.prepare_out(out, dict(fp, phases=["W_l(11)"]), arrays=arrays, derived=("phases",), fresh=False)

    lines = []
    assert cli.prepare_out(out, other, arrays=other_arrays, fresh=True, log=lines.append) is False
    (aside,) = [d for d in os.listdir(tmp_path) if d.startswith("x.old-")]
    assert open(tmp_path / aside / "result.npy").read() == "kept"  # nothing computed is lost
    assert json.load(open(tmp_path / aside / cli.RUN_FILE)) == saved
    assert os.listdir(out) == [cli.RUN_FILE] and aside in lines[0]
    assert cli.prepare_out(out, other, arrays=other_arrays, fresh=True) is False  # again: a second .old- folder
    assert len([d for d in os.listdir(tmp_path) if d.startswith("x.old-")]) == 2


def test_keep_earlier_renames_an_earlier_runs_results_by_when_they_were_written(tmp_path):
    """A measurement run again into the same folder keeps the earlier result beside the new one."""
    lines = []
    assert cli.keep_earlier(str(tmp_path), ["profile.json", "hlo.txt.gz"], log=lines.append) is None and not lines
    for name, text in (("profile.json", "first"), ("hlo.txt.gz", "first module")):
        (tmp_path / name).write_text(text)
    when = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    os.utime(tmp_path / "profile.json", (when, when))
    assert cli.keep_earlier(str(tmp_path), ["profile.json", "hlo.txt.gz"], log=lines.append) == "20260304-050607"
    assert sorted(os.listdir(tmp_path)) == ["hlo.20260304-050607.txt.gz", "profile.20260304-050607.json"]
    assert (tmp_path / "profile.20260304-050607.json").read_text() == "first"
    assert len(lines) == 1 and "profile.20260304-050607.json" in lines[0]
    # a second result written in the same second: a new name, nothing overwritten; absent names are skipped
    (tmp_path / "profile.json").write_text("second")
    os.utime(tmp_path / "profile.json", (when, when))
    assert cli.keep_earlier(str(tmp_path), ["profile.json", "hlo.txt.gz"], log=lines.append) == "20260304-050607-2"
    assert (tmp_path / "profile.20260304-050607-2.json").read_text() == "second"
    assert (tmp_path / "profile.20260304-050607.json").read_text() == "first"
    assert not (tmp_path / "hlo.20260304-050607-2.txt.gz").exists() and len(os.listdir(tmp_path)) == 3


def test_prepare_out_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"x")
    with pytest.raises(cli.UserError, match=f"{tmp_path} holds files but no run .run.json is missing.; rerun with"):
        cli.prepare_out(str(tmp_path), {"settings": {}}, fresh=False)
    with pytest.raises(cli.UserError, match="is a file"):
        cli.prepare_out(str(tmp_path / "photo.png"), {"settings": {}}, fresh=False)


def test_sessions_add_up(tmp_path):
    out = str(tmp_path)
    assert cli.run_timing(out) == {"seconds": 0, "iterations": 0, "iterations_per_second": None, "sessions": []}
    cli.record_session(out, iterations=30, seconds=3.0)
    cli.record_session(out, iterations=0, seconds=1.5)  # a resume that found nothing to do: not a session
    t = cli.record_session(out, iterations=10, seconds=2.0)
    assert [s["iterations"] for s in t["sessions"]] == [30, 10]
    assert t["seconds"] == 5.0 and t["iterations"] == 40 and t["iterations_per_second"] == 8.0
    assert not cli.is_finished(out)
    cli.mark_finished(out)
    assert cli.is_finished(out) and cli.run_timing(out) == t


# ----------------------------------------------------------------------------------------------
# Inputs.


def test_generator_config_without_weights(tmp_path):
    demo = cli.generator_config("demo")
    assert (demo.img_resolution, demo.img_channels, demo.num_ws, demo.w_dim) == (32, 3, 8, 128)
    assert cli.generator_config("demo-random").img_resolution == 64
    assert cli.generator_config(checkpoint.DEMO_DIR) == demo
    (tmp_path / "net.pkl").write_bytes(b"x")
    assert cli.generator_config(str(tmp_path / "net.pkl")) is None  # a source file: known once parsed
    with pytest.raises(FileNotFoundError, match="no generator at"):
        cli.generator_config(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        cli.generator_config(str(tmp_path))
    os.makedirs(tmp_path / "params")
    (tmp_path / "config.json").write_text("{bad")
    with pytest.raises(cli.UserError, match="config.json is damaged"):
        cli.generator_config(str(tmp_path))


def test_load_npy_refusals(tmp_path):
    shapes = [(8, 128), (2, 8, 128)]
    np.save(tmp_path / "ok.npy", np.ones((2, 8, 128)))
    assert cli.load_npy(str(tmp_path / "ok.npy"), "--w_init", shapes).dtype == np.float32
    np.save(tmp_path / "shape.npy", np.ones(3))
    np.save(tmp_path / "nan.npy", np.full((8, 128), np.nan))
    np.save(tmp_path / "obj.npy", np.array([{}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("hello")
    for name, words in (("shape.npy", r"shape \(3,\); this generator needs \(8, 128\) or \(2, 8, 128\)"),
                        ("nan.npy", "NaN"), ("obj.npy", "not a .npy array file"), ("text.npy", "no .npy header")):
        with pytest.raises(cli.UserError, match=words):
            cli.load_npy(str(tmp_path / name), "--w_init", shapes)
    with pytest.raises(FileNotFoundError, match="--w_init: no such file"):
        cli.load_npy(str(tmp_path / "none.npy"), "--w_init")


def test_load_image_decodes_before_the_size_is_known(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="bad.png"):
        cli.load_image(str(tmp_path / "bad.png"), None)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "ok.png")
    assert cli.load_image(str(tmp_path / "ok.png"), None) is None
    notes = []
    img = cli.load_image(str(tmp_path / "ok.png"), cli.generator_config("demo"), notes.append)
    assert img.shape == (32, 32, 3) and len(notes) == 2  # cropped, resized


def test_user_input_converts_only_value_errors():
    with pytest.raises(cli.UserError, match="^--mask=m.png: bad shape; give a mask the size of the image$"):
        with cli.user_input("--mask=m.png", "give a mask the size of the image"):
            raise ValueError("bad shape")
    with pytest.raises(KeyError):  # a bug keeps its type (and its traceback)
        with cli.user_input("--mask=m.png"):
            raise KeyError("x")


# ----------------------------------------------------------------------------------------------
# The command line: each mistake is one line on stderr, exit status 2, in seconds.


def test_corrupt_image_refused_before_the_generator_is_built(tmp_path):
    """demo-random takes ~20 s to build on 2 cores; the image is refused before it (~2 s)."""
    (tmp_path / "bad.png").write_bytes(b"\xff\xd8\xff garbage")
    p, seconds = run_cli("experiments.reconstruct", "--smoke", "--generator=demo-random",
                         f"--image={tmp_path}/bad.png", f"--out={tmp_path}/o")
    assert_one_line_error(p, "bad.png", "corrupt")
    assert seconds < 15 and not os.path.exists(tmp_path / "o")


def _mistakes(tmp_path):
    a = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(a).save(tmp_path / "deep.png")  # 16-bit greyscale: its value range is unknown
    (tmp_path / "garbage.pkl").write_bytes(b"hello, not a network")
    np.savez(tmp_path / "weights.npz", x=np.zeros(3))
    (tmp_path / "w.npy").write_text("not an array")
    return [
        ([f"--image={tmp_path}/deep.png"], ["deep.png", "not supported"]),
        (["--generator=/no/such/dir"], ["no generator at '/no/such/dir'"]),
        (["--generator=demo2"], ["no generator at 'demo2'", "'demo'"]),
        ([f"--generator={tmp_path}/weights.npz"], ["unknown checkpoint format"]),
        ([f"--generator={tmp_path}/garbage.pkl"], ["neither a pickle nor a zip"]),
        ([f"--w_init={tmp_path}/w.npy"], ["--w_init", "no .npy header"]),
        (["--w_init=mean"], ["--w_init=mean", "w_avg"]),
        (["--w_steps=-5"], ["--w_steps"]),
        (["--no_such_flag"], ["no_such_flag"]),
        (["--paper"], ["exclude"]),
        (["--compute_dtype=bfloat16", "--float32_above_db=high"], ["--float32_above_db=high", "auto, none"]),
        (["--resize_to=0"], ["--resize_to=0", ">= 16"]),  # was a ZeroDivisionError after the folder was made
        (["--w_lr=-1"], ["--w_lr=-1", "non-negative"]),  # was accepted
        (["--percept=nan"], ["--percept must be a finite number"]),  # was a NaN loss blamed on the learning rate
        (["--compute_dtype=bfloat16", "--float32_head=0.8", "--float32_tail=0.8"],
         ["--float32_head=0.8 and --float32_tail=0.8 add up to more than 1"]),  # was accepted, a phase all float32
        ([f"--image={tmp_path}"], ["is a folder, not an image"]),
        (["--image="], ["--image is empty"]),  # ran the demo
    ]


def test_cli_mistakes_end_in_one_line(tmp_path):
    for args, words in _mistakes(tmp_path):
        p, seconds = run_cli("experiments.reconstruct", "--smoke", f"--out={tmp_path}/o", *args)
        assert_one_line_error(p, *words)
        assert seconds < 30, (args, seconds)
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow  # three end-to-end runs; tests/test_apps_cli.py covers the same refusal in the default suite
def test_changed_settings_refused_then_fresh_moves_the_run_aside(tmp_path):
    out = str(tmp_path / "run")
    base = ["experiments.reconstruct", "--smoke", "--w_steps=2", "--noise_steps=1", f"--out={out}"]
    p, _ = run_cli(*base)
    assert p.returncode == 0, p.stderr[-2000:]
    before = open(os.path.join(out, "metrics.json")).read()

    p, _ = run_cli(*base)  # the same command: finished, says so, exit 0, nothing rewritten
    assert p.returncode == 0 and "already holds this run, finished" in p.stdout
    assert open(os.path.join(out, "metrics.json")).read() == before

    p, _ = run_cli(*base, "--seed=1", "--w_steps=3")
    assert_one_line_error(p, f"{out} holds a run with other settings (seed, w_steps); rerun with --fresh",
                          "or choose another --out")
    assert open(os.path.join(out, "metrics.json")).read() == before

    p, _ = run_cli(*base, "--seed=1", "--w_steps=3", "--fresh")
    assert p.returncode == 0, p.stderr[-2000:]
    (aside,) = [d for d in os.listdir(tmp_path) if d.startswith("run.old-")]
    assert open(tmp_path / aside / "metrics.json").read() == before  # the old run, whole
    assert json.load(open(os.path.join(out, "metrics.json")))["config"]["seed"] == 1


def test_a_refused_checkpoint_ends_in_one_line_naming_fresh(tmp_path):
    """A checkpoint the engine refuses (another run's, or one from a version whose run fingerprint
    differs) inside the commands' user_input wrapping: one line, naming the folder and --fresh."""
    from i2spp_jax import embed

    out = str(tmp_path / "run")
    with pytest.raises(cli.UserError) as e:
        with cli.resumable(out), cli.user_input("crossover inputs", "check the masks"):
            raise embed.CheckpointMismatchError("the checkpoint in x belongs to a different run\n a\n b")
    msg = str(e.value)
    assert "\n" not in msg and out in msg and "--fresh" in msg and "check the masks" not in msg
    with pytest.raises(cli.UserError, match="crossover inputs: bad mask; check the masks"):
        with cli.resumable(out), cli.user_input("crossover inputs", "check the masks"):
            raise ValueError("bad mask")  # other library errors keep their wording


def test_another_generator_at_the_same_path_is_refused_not_resumed(tmp_path):
    """The run folder records the generator's content: a file replaced at the same --generator path
    is another run (found by an audit: a finished run was reported as this one, and resumed)."""
    import jax

    G = checkpoint.load_generator("demo")
    gen = tmp_path / "gen"
    checkpoint.save_generator(G, str(gen))
    base = ["experiments.reconstruct", "--smoke", "--w_steps=1", "--noise_steps=1", f"--generator={gen}",
            f"--out={tmp_path}/run"]
    p, _ = run_cli(*base)
    assert p.returncode == 0, p.stderr[-2000:]
    import shutil

    shutil.rmtree(gen)
    checkpoint.save_generator(type(G)(params=jax.tree.map(lambda a: a * 1.05, G.params), config=G.config), str(gen))
    p, _ = run_cli(*base)
    assert_one_line_error(p, "holds a run with another generator", "--fresh")


def test_a_run_json_of_an_earlier_version_is_completed_not_refused(tmp_path):
    out = str(tmp_path / "x")
    fp = {"settings": {"w_steps": 10}}
    arrays = {"targets": {"a": np.zeros((4, 4, 3), np.float32)}}
    assert cli.prepare_out(out, fp, arrays=arrays, fresh=False, log=print) is False  # written without a digest
    assert cli.prepare_out(out, dict(fp, generator_digest="abc"), arrays=arrays, fresh=False, log=print) is True
    assert json.load(open(os.path.join(out, cli.RUN_FILE)))["generator_digest"] == "abc"
    with pytest.raises(cli.UserError, match="another generator"):
        cli.prepare_out(out, dict(fp, generator_digest="abd"), arrays=arrays, fresh=False)
    with pytest.raises(cli.UserError, match=r"other settings \(new, w_steps\)"):  # only the digest is adopted
        cli.prepare_out(str(tmp_path / "x"), {"settings": {"w_steps": 11}, "generator_digest": "abc", "new": 1},
                        arrays=arrays, fresh=False)


def test_an_unwritable_out_and_ctrl_c_end_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    p, _ = run_cli("experiments.reconstruct", "--smoke", f"--out={tmp_path}/a_file/run")
    assert_one_line_error(p, f"--out={tmp_path}/a_file/run: cannot make the run folder there (a file is in the way)")
    import signal

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.reconstruct", "--smoke", "--w_steps=100000",
                             "--log_every=1", f"--out={out}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # optimising: interrupt it as a user would
        if "[W_l" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted: rerun the same command to resume from its last checkpoint"
    # The run stopped at a checkpoint of its own, not the last periodic one (the default is every 500).
    stopped = re.search(r"stopping at iteration (\d+)/\d+ on SIGINT: checkpoint written", rest)
    assert stopped and int(stopped[1]) % 500, rest[-2000:]
    # SIGTERM (a scheduler's preemption) likewise, in one line, and the rerun resumes where it stopped.
    proc = subprocess.Popen(proc.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resumed = False
    for line in proc.stdout:
        if "[W_l" in line:
            break
        if "resumed" in line:
            assert f"at iteration {stopped[1]}/" in line, line
            resumed = True
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert resumed and proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM): rerun the same command to resume from its last checkpoint"
    assert re.search(r"stopping at iteration \d+/\d+ on SIGTERM: checkpoint written", rest), rest[-2000:]


def test_a_write_failure_is_found_behind_orbax_s_wrapping():
    full = ValueError('RESOURCE_EXHAUSTED: Error writing "1" in OCDBT database at local file "/x/ckpt/1/": '
                      "Failed to write 285 bytes to file 7: No space left on device [os_error_code='28']")
    e = cli._write_failure(full)
    assert (e.errno, e.filename) == (28, "/x/ckpt/1/")
    try:
        try:
            raise OSError(30, "Read-only file system", "/ro/x")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert cli._write_failure(outer).errno == 30
    assert cli._write_failure(ValueError("a bug")) is None


def test_a_checkpoint_left_half_written_is_reported_plainly_and_replaced(tmp_path):
    """Audit A: a rerun after a kill during a save printed orbax's "Attempted to create temporary
    directory ... Removing existing directory since it is not finalized."; it is said plainly now."""
    import logging

    from i2spp_jax.engine import checkpoints

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    absl_logger = logging.getLogger("absl")
    plain, keep = cli._PlainUnfinishedCheckpoint(), Keep(logging.WARNING)
    absl_logger.addFilter(plain)
    absl_logger.addHandler(keep)
    try:
        store = checkpoints.open_store(str(tmp_path / "ckpt"), local=False)
        store.save(1, [np.ones(3)], {"t": 1})
        store.wait_until_finished()
        half = tmp_path / "ckpt" / "2.orbax-checkpoint-tmp"  # orbax's name for step 2 while it is written
        half.mkdir()
        (half / "junk").write_text("a save cut off")
        store.save(2, [np.full(3, 2.0)], {"t": 2})
        store.wait_until_finished()
        state, meta = store.restore(2, [np.zeros(3)])
        store.close()
    finally:
        absl_logger.removeFilter(plain)
        absl_logger.removeHandler(keep)
    assert meta == {"t": 2} and np.array_equal(state[0], np.full(3, 2.0)) and not half.exists()
    (note,) = [m for m in seen if str(half) in m]
    assert note.startswith(f"removed {half}: a checkpoint left half-written") and "not finalized" not in note


def test_a_target_named_like_the_run_s_own_files_gets_its_own_folder(tmp_path):
    """history.npz.png's folder was history.npz (the run's history file: a crash at the end) and
    ckpt.png's was ckpt/ (its results inside the checkpoints); found by an audit."""
    src = checkpoint.heldout_images()[0]
    paths = []
    for name in ("history.npz.png", "ckpt.png", "run.json.png"):
        paths.append(str(tmp_path / name))
        Image.open(src).save(paths[-1])
    out = tmp_path / "run"
    p, _ = run_cli("experiments.reconstruct", "--smoke", "--w_steps=1", "--noise_steps=1", f"--image={','.join(paths)}",
                   f"--out={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("history.npz_image", "ckpt_image", "run.json_image"):
        assert (out / name / "w_plus.npy").exists() and (out / name / "target.png").exists()
    assert (out / "history.npz").is_file() and json.load(open(out / "run.json"))["settings"]
    assert not (out / "ckpt" / "target.png").exists()


def test_a_damaged_generator_checkpoint_is_named_in_one_line(tmp_path):
    import shutil

    def copy(name):
        d = tmp_path / name
        shutil.copytree(checkpoint.DEMO_DIR, d)
        return d

    wrong = copy("wrong_z")  # config.json edited: it no longer describes the weights (was accepted)
    cfg = json.load(open(wrong / "config.json"))
    cfg["config"]["z_dim"] = 64
    json.dump(cfg, open(wrong / "config.json", "w"))
    with pytest.raises(checkpoint.CheckpointError, match=r"config.json does not fit its params/ .*fc0/weight"):
        checkpoint.load_generator(str(wrong))
    cut = copy("cut")  # every data file cut short (was a tensorstore traceback)
    for f in (cut / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 100 and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:100])
    p, _ = run_cli("experiments.reconstruct", "--smoke", f"--generator={cut}", f"--out={tmp_path}/o")
    assert_one_line_error(p, f"{cut}: its params/ cannot be read", "the checkpoint is damaged")


@pytest.mark.parametrize("command, listed", [
    ("experiments.inpaint", ["--smoke", "--paper", "--image", "--hole", "--out", "--generator", "--fillings"]),
    ("experiments.reconstruct", ["--smoke", "--paper", "--w_steps", "--schedule", "--compute_dtype", "--image"]),
])
def test_help_lists_the_shared_flags_a_command_takes(command, listed):
    """--help showed only the flags the command's own file defines (--fillings), not --smoke or --image."""
    p, _ = run_cli(command, "--help")
    assert p.returncode == 0, p.stderr[-2000:]  # absl exits 1 after help (audit C2, finding 20)
    for flag in listed:
        assert f"\n  {flag}:" in p.stdout or f"\n  --[no]{flag[2:]}:" in p.stdout, (flag, p.stdout[-3000:])


def test_an_application_that_refuses_its_inputs_leaves_no_run_behind(tmp_path):
    """A scribbled image equal to the original is refused inside the application, after the run folder
    was made; the corrected command was then refused as "another run" (found by an audit)."""
    src = checkpoint.heldout_images()[0]
    original, scribbled = tmp_path / "o.png", tmp_path / "s.png"
    Image.open(src).convert("RGB").save(original)
    Image.open(src).convert("RGB").save(scribbled)
    out = tmp_path / "run"
    base = ["experiments.scribble", "--smoke", f"--original={original}", f"--scribbled={scribbled}", f"--out={out}"]
    p, _ = run_cli(*base)
    assert_one_line_error(p, "no scribbles")
    assert not out.exists()
    a = np.asarray(Image.open(scribbled)).copy()
    a[8:16, 8:16] = 255
    Image.fromarray(a).save(scribbled)
    p, _ = run_cli(*base)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_mask_file_of_another_aspect_ratio_is_refused(tmp_path):
    """The mask is cropped and resized as its image is; a turned or foreign mask was used silently."""
    Image.new("RGB", (50, 30), (90, 90, 90)).save(tmp_path / "wide.png")
    turned = Image.new("L", (30, 50), 0)
    turned.paste(255, (0, 0, 30, 25))
    turned.save(tmp_path / "turned.png")
    p, _ = run_cli("experiments.inpaint", "--smoke", f"--image={tmp_path}/wide.png", f"--hole={tmp_path}/turned.png",
                   f"--out={tmp_path}/o")
    assert_one_line_error(p, "is 30x50 but --image=", "is 50x30: another aspect ratio")
    assert not (tmp_path / "o").exists()
    # the same picture turned by its EXIF tag is 30x50 as displayed: the turned mask fits it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (50, 30), (90, 90, 90)).save(tmp_path / "photo.jpg", exif=exif)
    from experiments import edit_cli

    assert edit_cli._file_size(str(tmp_path / "photo.jpg")) == (30, 50)


def test_a_second_command_into_a_running_folder_is_refused(tmp_path):
    """Two commands into one --out at once wrote beside each other (an orbax traceback for the second)."""
    out = str(tmp_path / "run")
    fp = {"settings": {"w_steps": 1}}
    assert cli.prepare_out(out, fp, fresh=False, lock=True, log=print) is False  # this process holds the lock
    other = ("from experiments import cli\n"
             "try:\n"
             f"    cli.prepare_out({out!r}, {fp!r}, fresh=True, lock=True)\n"
             "except cli.UserError as e:\n"
             "    print(e)\n")
    p = subprocess.run([sys.executable, "-c", other], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"another command is running in {out} now" in p.stdout, p.stdout + p.stderr[-2000:]
    assert os.listdir(tmp_path) == ["run"]  # --fresh did not move the running folder aside


def test_an_older_run_json_with_a_section_this_version_lacks_is_refused_not_a_crash(tmp_path):
    out = str(tmp_path / "x")
    cli.prepare_out(out, {"settings": {"a": 1}, "gone": 1}, fresh=False, log=print)
    with pytest.raises(cli.UserError, match=r"other settings \(gone\)"):  # was a KeyError
        cli.prepare_out(out, {"settings": {"a": 1}, "generator_digest": "abc"}, fresh=False)


@pytest.mark.parametrize("help_flag", ["--help", "--helpfull"])
def test_help_exits_zero(help_flag):
    """Audit C2, finding 20: absl's help flags print the help and exit with status 1."""
    p, _ = run_cli("experiments.evaluate_generator", help_flag)
    assert p.returncode == 0 and "--n_nn" in p.stdout and not p.stderr.strip(), p.stderr[-2000:]


@pytest.mark.parametrize("arg, words", [
    ("--point=b16", ["--point=b16: not an activation point of this generator", "b16.img", "--layer"]),
    ("--layer=0", ["--layer=0", "between 1 and 18"]),
])
def test_a_bad_feature_transfer_point_is_one_clear_line(tmp_path, arg, words):
    """Audit C2, finding 20: it ended in "; check that the masks and images fit the generator", a fix
    for another mistake, after the run folder had been made."""
    p, _ = run_cli("experiments.feature_transfer", "--smoke", f"--out={tmp_path / 'ft'}", arg)
    assert_one_line_error(p, *words)
    assert "masks and images" not in p.stderr and not (tmp_path / "ft").exists()


def test_feature_transfer_points_refuses_a_flag_in_one_line():
    p, _ = run_cli("experiments.feature_transfer_points", "--point=b16")
    assert_one_line_error(p, "Unknown command line flag 'point'")
