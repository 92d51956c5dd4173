"""experiments/embed_folder.py: a folder embedded in batches over several (forced CPU) devices, a real
kill and restart, bad files recorded and skipped, several hosts.

The command runs in subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag
must be set before JAX starts), sharing one compilation cache so that each compiles little.
"""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import cli, folder_store
from experiments.progress import Progress
from i2spp_jax import checkpoint, io, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["a_boot.png", "b_trouser.png", "c_sneaker.png", "sub/d_dress.png", "sub/e_bag.png"]
BAD = {"broken.png": "corrupt or truncated", "big.png": "64x64, the generator needs 32x32",
       "fake.jpg": "not an image pillow can read"}
# W+ 40 + noise 30 iterations with a random-weight VGG at 32: long enough to kill a batch in the
# middle, short enough for the default suite; a checkpoint every 10 iterations.
SETTINGS = ["--generator=demo", "--w_steps=40", "--noise_steps=30", "--vgg=random", "--resize_to=32",
            "--checkpoint_every=10", "--batch_per_device=1"]
# 4 devices x 1 image vs 1 device x 1 image. W+ agrees to float rounding (measured: bit-identical,
# 2-core CPU, jax 0.10.2). In the noise phase a batch of 1 uses the grouped convolution
# (embed.modconv_for) and a split batch the modulated activations; 30 Adam steps at lr 5 on
# gradients near Adam's ε amplify their rounding, by an amount that changes with any change of
# float order: per map |Δn| / |n| up to 1.8e-3 (one image of five) and final PSNRs within 8.2e-5 dB in
# one version; up to 5e-5 and 3.8e-6 dB at b80ebed; up to 7.7e-3 and 2.8e-3 dB (the same image)
# once the FIR's gradient became one pass (its gradients equal JAX's to 1e-6, tested in
# test_generator). A swapped or mixed image differs by whole dBs (these five: 0.75 dB apart at the
# closest) and by about 100% of a noise map's norm.
W_ATOL, NOISE_RTOL_NORM, PSNR_ATOL = 1e-6, 5e-2, 2e-2


def make_folder(root):
    """5 usable 32x32 images (2 in a subfolder) and 3 bad files, plus a text file to ignore."""
    shipped = checkpoint.heldout_images()
    os.makedirs(os.path.join(root, "sub"))
    for src, name in zip(shipped, GOOD):
        with open(src, "rb") as f, open(os.path.join(root, name), "wb") as g:
            g.write(f.read())
    with open(shipped[0], "rb") as f:
        open(os.path.join(root, "broken.png"), "wb").write(f.read()[:300])
    Image.new("RGB", (64, 64), (200, 10, 10)).save(os.path.join(root, "big.png"))
    open(os.path.join(root, "fake.jpg"), "w").write("not a picture")
    open(os.path.join(root, "notes.txt"), "w").write("ignored")
    return root


def command(images, out, *args, cache):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", I2SPP_CACHE=cache)
    return [sys.executable, "-m", "experiments.embed_folder", f"--images={images}", f"--out={out}", *SETTINGS,
            *args], env


def run(images, out, *args, cache, timeout=600):
    cmd, env = command(images, out, *args, cache=cache)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def outputs(out):
    """{image: (w_plus, [noise maps], metrics)} of a finished run."""
    got = {}
    for key in GOOD:
        d = os.path.join(out, "results", folder_store.result_name(key))
        noise = [np.load(p) for p in sorted(glob.glob(os.path.join(d, "noise", "*.npy")))]
        got[key] = (np.load(os.path.join(d, "w_plus.npy")), noise, json.load(open(os.path.join(d, "metrics.json"))))
    return got


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    return {"images": make_folder(str(base / "images")), "cache": str(base / "cache"), "base": base}


@pytest.fixture(scope="module")
def reference(env):
    """The uninterrupted run on one device."""
    out = str(env["base"] / "one_device")
    p = run(env["images"], out, "--devices=1", cache=env["cache"])
    return out, p


@pytest.mark.slow  # a second end-to-end run (70 s); the engine's sharding: test_embed's mesh test
def test_sharded_run_equals_one_device_and_records_bad_files(env, reference):
    one_out, one = reference
    out = str(env["base"] / "four_devices")
    p = run(env["images"], out, cache=env["cache"])  # all 4 devices: batches of 4 + 1 (padded with 3)
    assert "batches of 4 (1 per device on 4 cpu device(s))" in p.stdout
    assert "batches of 1 (1 per device on 1 cpu device(s))" in one.stdout
    # exactly the usable images have results: the padding left nothing; nothing half-written is left
    for o in (out, one_out):
        got = sorted(os.path.relpath(d, os.path.join(o, "results")) for d in
                     glob.glob(os.path.join(o, "results", "**", "*_png"), recursive=True))
        assert got == sorted(folder_store.result_name(k) for k in GOOD)
        assert not os.path.exists(os.path.join(o, "ckpt")) and not glob.glob(os.path.join(o, "results", ".tmp*"))
    sharded, single = outputs(out), outputs(one_out)
    for key in GOOD:
        (w4, n4, m4), (w1, n1, m1) = sharded[key], single[key]
        np.testing.assert_allclose(w4, w1, atol=W_ATOL, rtol=0, err_msg=key)
        assert len(n4) == len(n1) == 7
        for a, b in zip(n4, n1):
            assert np.linalg.norm(a - b) <= NOISE_RTOL_NORM * np.linalg.norm(b), key
        assert abs(m4["final"]["psnr"] - m1["final"]["psnr"]) < PSNR_ATOL, key
        assert m4["batch"]["devices"] == 4 and m1["batch"]["devices"] == 1
    # each image's result is its own: rendering the saved variables gives result.png and the PSNR
    G = checkpoint.load_generator("demo")
    for key in GOOD:
        w, noise, m = sharded[key]
        img = np.asarray(jnp.clip(G.synthesis(jnp.asarray(w)[None], noise=[jnp.asarray(n)[None] for n in noise]),
                                  -1, 1)[0])
        d = os.path.join(out, "results", folder_store.result_name(key))
        assert np.abs(io.to_uint8(img).astype(int) - np.asarray(Image.open(os.path.join(d, "result.png"))
                                                                .convert("RGB")).astype(int)).max() <= 1
        target, _ = io.load_image(os.path.join(env["images"], key), 32, 3)
        psnr = float(metrics.psnr(jnp.asarray(img)[None], jnp.asarray(target)[None])[0])
        assert abs(psnr - m["final"]["psnr"]) < 1e-3, key
        assert m["final"]["psnr"] > m["per_phase"][0]["psnr"] - 0.5
        assert m["sha256"] == hashlib.sha256(open(os.path.join(env["images"], key), "rb").read()).hexdigest()
    # bad files: recorded with their reason, never stopping the others
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert set(manifest["images"]) == set(GOOD) | set(BAD)  # notes.txt is not an image: ignored
    for key, why in BAD.items():
        entry = manifest["images"][key]
        assert entry["status"] == "failed" and entry["stage"] == "read" and why in entry["reason"], entry
        assert json.load(open(os.path.join(out, "failed", folder_store.result_name(key) + ".json")))["reason"] == \
            entry["reason"]
    assert all(manifest["images"][k]["status"] == "done" for k in GOOD)
    s = manifest["summary"]
    assert (s["images"], s["done"], s["failed"], s["pending"]) == (8, 5, 3, 0)
    assert abs(s["psnr_mean"] - np.mean([sharded[k][2]["final"]["psnr"] for k in GOOD])) < 1e-6
    # the progress bar and the summary table
    assert "images/s | ETA" in p.stdout and "5 images in" in p.stdout
    for row in ("embedded      5 (5 in this session)", "failed        3 (read 3", "final PSNR    mean"):
        assert row in p.stdout, p.stdout[-2000:]


def _snapshot(out):
    """{path: (mtime_ns, sha256)} of every finished result file."""
    snap = {}
    for path in glob.glob(os.path.join(out, "results", "**", "*"), recursive=True):
        if os.path.isfile(path) and "/.tmp" not in path:
            snap[path] = (os.stat(path).st_mtime_ns, hashlib.sha256(open(path, "rb").read()).hexdigest())
    return snap


@pytest.mark.slow  # a real kill and two restarts (about 60 s); test_embed covers the engine's exact resume
def test_killed_run_restarts_losing_and_redoing_nothing(env, reference):
    one_out, _ = reference
    out = str(env["base"] / "killed")
    cmd, penv = command(env["images"], out, "--devices=1", cache=env["cache"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # kill (SIGKILL: no clean-up runs) once an image is finished and an unfinished batch has a checkpoint
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        finished = {json.load(open(p))["batch"]["id"] for p in
                    glob.glob(os.path.join(out, "results", "*_png", "metrics.json"))}
        steps = [d for d in glob.glob(os.path.join(out, "ckpt", "process0-batch-*", "*"))
                 if os.path.basename(d).isdigit() and d.split("-batch-")[1].split("/")[0] not in finished]
        if finished and steps:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _snapshot(out)
    assert before, "nothing was finished before the kill"
    p = run(env["images"], out, "--devices=1", cache=env["cache"])
    assert "resumed from" in p.stdout, p.stdout[-3000:]
    resumed_at = int(p.stdout.split("resumed from")[1].split("at iteration ")[1].split("/")[0])
    assert resumed_at > 0
    done_before = len({os.path.dirname(k) for k in before if k.endswith("metrics.json")})
    assert f"{done_before} done before" in p.stdout
    after = _snapshot(out)
    assert {k: after[k] for k in before} == before  # finished files untouched: not rewritten, not lost
    # and the result is the uninterrupted run's, bit for bit (the engine's resume is exact)
    killed, single = outputs(out), outputs(one_out)
    for key in GOOD:
        np.testing.assert_array_equal(killed[key][0], single[key][0], err_msg=key)
        for a, b in zip(killed[key][1], single[key][1]):
            np.testing.assert_array_equal(a, b, err_msg=key)
        assert killed[key][2]["per_phase"] == single[key][2]["per_phase"]
    assert not os.path.exists(os.path.join(out, "ckpt"))
    # a third run finds everything finished and changes nothing
    p = run(env["images"], out, "--devices=1", cache=env["cache"])
    assert "5 done before, 3 failed before, 0 to embed" in p.stdout
    assert _snapshot(out) == after


def test_changed_settings_and_bad_flags_end_in_one_line(env, reference):
    one_out, _ = reference
    cmd, penv = command(env["images"], one_out, "--devices=1", "--seed=7", cache=env["cache"])
    for args, words in [(cmd, "holds a run with other settings (seed); rerun with --fresh"),
                        (cmd[:3] + [f"--images={env['base']}/none"] + cmd[4:], "no such folder"),
                        (cmd + ["--devices=5"], "--devices=5, but this host has 4 cpu device(s)"),
                        (cmd + ["--num_processes=2"], "need --coordinator_address, --num_processes and --process_id"),
                        (cmd + ["--distributed"], "--distributed found no cluster to join")]:  # was a traceback
        p = subprocess.run(args, cwd=ROOT, env=penv, capture_output=True, text=True, timeout=300)
        lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
        assert p.returncode == 2 and len(lines) == 1 and words in lines[0], p.stderr[-2000:]
        assert "Traceback" not in p.stderr


@pytest.mark.slow  # two processes joined by jax.distributed, each with 2 forced CPU devices
def test_two_hosts_share_the_folder(env, reference):
    one_out, _ = reference
    out = str(env["base"] / "two_hosts")
    procs = []
    for i in range(2):
        cmd, penv = command(env["images"], out, "--coordinator_address=localhost:23456", "--num_processes=2",
                            f"--process_id={i}", cache=env["cache"])
        penv["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    assert "this host (process 0 of 2) takes 4" in logs[0] and "this host (process 1 of 2) takes 4" in logs[1]
    assert "all 2 hosts: 5 of 8 images embedded, 3 failed" in logs[0]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert [manifest["images"][k]["status"] for k in GOOD] == ["done"] * 5
    ran_on = {json.load(open(os.path.join(out, "results", folder_store.result_name(k), "metrics.json")))["batch"]
              ["process"] for k in GOOD}
    assert ran_on == {0, 1}
    two, single = outputs(out), outputs(one_out)
    for key in GOOD:
        np.testing.assert_allclose(two[key][0], single[key][0], atol=W_ATOL, rtol=0, err_msg=key)


# ----------------------------------------------------------------------------------------------
# The parts, in process.


def test_listing_names_and_shares(tmp_path):
    root = make_folder(str(tmp_path / "images"))
    os.makedirs(os.path.join(root, ".hidden"))
    Image.new("RGB", (32, 32)).save(os.path.join(root, ".hidden", "x.png"))
    Image.new("RGB", (32, 32)).save(os.path.join(root, "a_boot.jpg"))  # same stem as a_boot.png
    out = os.path.join(root, "run")  # an output folder inside the images folder is not read
    os.makedirs(os.path.join(out, "results"))
    Image.new("RGB", (32, 32)).save(os.path.join(out, "results", "y.png"))
    keys, ignored = folder_store.list_images(root, out)
    assert keys == sorted(GOOD + list(BAD) + ["a_boot.jpg"]) and ignored == 1
    names = [folder_store.result_name(k) for k in keys]
    assert len(set(names)) == len(names) and folder_store.result_name("sub/d_dress.png") == "sub/d_dress_png"
    shares = [folder_store.host_share(keys, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == keys and all(len(s) in (3, 4) for s in shares)
    seeds = {folder_store.image_seed(0, k) for k in keys}
    assert len(seeds) == len(keys) and folder_store.image_seed(0, "a") == folder_store.image_seed(0, "a") != \
        folder_store.image_seed(1, "a")


def test_store_counts_only_whole_results_and_retries_changed_files(tmp_path):
    root = make_folder(str(tmp_path / "images"))
    out = str(tmp_path / "out")
    keys = GOOD[:2]
    store = folder_store.Store(out, root, keys, 0, 1)
    store.finish(keys[0], lambda d: {"final": {"psnr": 20.0, "ssim": 0.5}, "file": folder_store.file_stat(
        os.path.join(root, keys[0]))})
    # a crash while writing the second leaves only a temporary folder: it does not count as done
    half = os.path.join(store._tmp_root(), folder_store.result_name(keys[1]))
    os.makedirs(half)
    open(os.path.join(half, "w_plus.npy"), "w").write("half")
    store.fail(keys[1], "read", "was broken")
    again = folder_store.Store(out, root, keys, 0, 1)
    assert set(again.done) == {keys[0]} and set(again.failed) == {keys[1]} and again.pending() == []
    assert not os.path.exists(half)  # the half-written folder was removed
    os.utime(os.path.join(root, keys[1]), ns=(1, 1))  # the failed file changed: it is retried
    third = folder_store.Store(out, root, keys, 0, 1)
    assert third.pending() == [keys[1]]


class _Stream:
    """A log file's stream for Progress: collects what it writes; not a terminal."""

    text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return False


def test_progress_line():
    s = _Stream()
    p = Progress(10, done_before=2, failed_before=1, stream=s)
    p.iteration(4, 0, 100)  # the first iteration (compiled now) of a batch of 4: the clock starts
    assert "3/10 images (1 failed) | 0 images/s | ETA --:--" in s.text
    p.t0 -= 10.0  # ten seconds later the batch is done
    p.finished(done=4)  # 4 images less the 0.04 done at the start, in 10 s: 3 left
    assert "[################........] 7/10 images (1 failed) | 0.396 images/s | ETA 0:08" in s.text


def test_an_image_whose_loss_becomes_nan_fails_alone(tmp_path, monkeypatch):
    """The engine stops a batch when one image's loss is NaN: that image is recorded as failed and
    the batch's other images are embedded in the next batch, with nothing of the failed one."""
    from experiments import embed_folder as ef
    from i2spp_jax import embed

    root = make_folder(str(tmp_path / "images"))
    calls, real = [], embed.embed

    def engine(G, stack, **kw):
        calls.append(np.asarray(stack))
        if len(calls) == 1:  # the first batch: its second image "diverges"
            err = embed.NonFiniteLossError("the loss became NaN/inf at iteration 2 (phase W_l, image(s) [1])")
            err.images, err.history, err.phase_vars = [1], {}, []
            raise err
        return real(G, stack, **kw)

    monkeypatch.setattr(embed, "embed", engine)
    cfg = ef.FolderConfig(images=root, out=str(tmp_path / "out"), w_steps=2, noise_steps=1, percept=0.0,
                          vgg="random", batch_per_device=2, checkpoint_every=0)
    summary = ef.embed_folder(cfg, log=lambda _: None)
    assert (summary["done"], summary["failed"]) == (4, 4)  # 3 bad files + the diverged one
    failed = json.load(open(os.path.join(cfg.out, "failed", "b_trouser_png.json")))
    assert failed["stage"] == "optimise" and "NaN/inf" in failed["reason"]
    first, second = calls[0], calls[1]
    a_boot = io.load_image(os.path.join(root, "a_boot.png"), 32, 3)[0]
    np.testing.assert_array_equal(first[0], a_boot)
    np.testing.assert_array_equal(second[0], a_boot)  # back in the queue, in front
    assert not any(np.array_equal(s, first[1]) for batch in calls[1:] for s in batch)  # never again
    assert sorted(os.listdir(os.path.join(cfg.out, "results"))) == ["a_boot_png", "c_sneaker_png", "sub"]


# ----------------------------------------------------------------------------------------------
# Names that never collide, unreadable images, the generator's content, a run in which all fail.


def _collisions(names):
    """Names equal to another, or a folder above another (its results would hold the other's)."""
    taken = set(names)
    clashes = [n for n in taken if names.count(n) > 1]
    for n in taken:
        parts = n.split("/")
        clashes += [(a, n) for a in ("/".join(parts[:i]) for i in range(1, len(parts))) if a in taken]
    return clashes


def test_result_names_are_injective_over_any_tree():
    import random

    pieces = ["a", "a.png", "a_png", "a_png.json", "a_png.d", "a.d", "A_PNG", "b.jpg", "b_jpg", "c_tif", "c_tiff",
              "c.tiff", "x.d.png", "x.d", "x.d.d", "y_gif.json.d"]
    rng = random.Random(0)
    keys = {"a.png", "a_png/x.png", "sub/d_dress.png"}
    for _ in range(3000):
        folders = [rng.choice(pieces) for _ in range(rng.randrange(3))]
        name = rng.choice(pieces)
        if os.path.splitext(name)[1].lower() in folder_store.IMAGE_EXTS:
            keys.add("/".join(folders + [name]))
    names = [folder_store.result_name(k) for k in sorted(keys)]
    assert _collisions(names) == [] and _collisions([n + ".json" for n in names]) == []  # results/, failed/
    # readable: only a folder named like a result is marked
    assert folder_store.result_name("sub/d_dress.png") == "sub/d_dress_png"
    assert folder_store.result_name("a_png/x.png") == "a_png.d/x_png"
    assert folder_store.result_name("a.png") == folder_store.legacy_result_name("a.png") == "a_png"


def _fake_result(out, root, name, key):
    os.makedirs(os.path.join(out, "results", name))
    json.dump({"image": key, "final": {"psnr": 20.0, "ssim": 0.5},
               "file": folder_store.file_stat(os.path.join(root, key))},
              open(os.path.join(out, "results", name, "metrics.json"), "w"))
    open(os.path.join(out, "results", name, "w_plus.npy"), "w").write(key)


def test_store_moves_an_older_runs_results_to_the_new_names(tmp_path):
    """An --out of an earlier version (folders not escaped) is recognised: its finished results and
    failures move to the new names, and a file named like a folder (a.png beside a_png/) can be added."""
    root = str(tmp_path / "images")
    keys = ["a.png", "a_png/b_jpg/y.png", "a_png/x.png", "sub/c.png"]
    for key in keys:
        os.makedirs(os.path.dirname(os.path.join(root, key)) or root, exist_ok=True)
        Image.new("RGB", (32, 32)).save(os.path.join(root, key))
    out = str(tmp_path / "out")  # the older run: x and c done, y failed, a.png added since
    for key in ("a_png/x.png", "sub/c.png"):
        _fake_result(out, root, folder_store.legacy_result_name(key), key)
    old_failure = os.path.join(out, "failed", "a_png", "b_jpg", "y_png.json")
    os.makedirs(os.path.dirname(old_failure))
    json.dump({"image": "a_png/b_jpg/y.png", "stage": "read", "reason": "was broken",
               "file": folder_store.file_stat(os.path.join(root, "a_png/b_jpg/y.png"))}, open(old_failure, "w"))
    store = folder_store.Store(out, root, keys, 0, 1)
    assert set(store.done) == {"a_png/x.png", "sub/c.png"} and set(store.failed) == {"a_png/b_jpg/y.png"}
    assert store.pending() == ["a.png"] and sorted(store.renamed) == ["a_png/b_jpg/y.png", "a_png/x.png"]
    assert open(os.path.join(out, "results", "a_png.d", "x_png", "w_plus.npy")).read() == "a_png/x.png"
    assert os.path.exists(os.path.join(out, "failed", "a_png.d", "b_jpg.d", "y_png.json"))
    assert not os.path.exists(os.path.join(out, "results", "a_png")) and not os.path.exists(old_failure)
    store.finish("a.png", lambda d: {"final": {"psnr": 21.0, "ssim": 0.5},  # was: Directory not empty
                                     "file": folder_store.file_stat(os.path.join(root, "a.png"))})
    assert sorted(os.listdir(os.path.join(out, "results", "a_png"))) == ["metrics.json"]
    assert folder_store.Store(out, root, keys, 0, 1).pending() == []
    # the older version's mixed folder (a.png and a_png/x.png both finished in results/a_png) is separated
    out = str(tmp_path / "mixed")
    _fake_result(out, root, "a_png", "a.png")
    _fake_result(out, root, "a_png/x_png", "a_png/x.png")
    store = folder_store.Store(out, root, keys, 0, 1)
    assert set(store.done) == {"a.png", "a_png/x.png"} and store.renamed == ["a_png/x.png"]
    assert sorted(os.listdir(os.path.join(out, "results", "a_png"))) == ["metrics.json", "w_plus.npy"]
    assert json.load(open(os.path.join(out, "results", "a_png.d", "x_png", "metrics.json")))["image"] == "a_png/x.png"


def test_unreadable_images_fail_alone_and_names_never_collide(tmp_path, monkeypatch):
    """Any error reading one image (pillow's DecompressionBombError, MemoryError, an unexpected type)
    records that image in failed/ and the run goes on; a large image's warning is not printed; a.png
    and a_png/x.png keep their results apart."""
    import struct
    import warnings

    from experiments import embed_folder as ef

    shipped = checkpoint.heldout_images()
    root = str(tmp_path / "images")
    os.makedirs(os.path.join(root, "a_png"))
    for src, key in zip(shipped, ["a.png", "a_png/x.png", "oom.png", "odd.png"]):
        with open(src, "rb") as f, open(os.path.join(root, key), "wb") as g:
            g.write(f.read())
    # pillow's limits lowered, so that small files stand for a bomb (error over 2 x 3000 pixels) and a
    # large image (a warning over 3000 pixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    Image.new("L", (80, 80), 128).save(os.path.join(root, "bomb.png"))
    Image.new("L", (60, 60), 128).save(os.path.join(root, "large.png"))
    real = io.load_image

    def load_image(path, *a, **kw):
        if path.endswith("oom.png"):
            raise MemoryError()
        if path.endswith("odd.png"):
            raise struct.error("unpack requires a buffer of 4 bytes")  # as a broken pillow plugin might
        return real(path, *a, **kw)

    monkeypatch.setattr(io, "load_image", load_image)
    cfg = ef.FolderConfig(images=root, out=str(tmp_path / "out"), w_steps=2, noise_steps=1, percept=0.0,
                          vgg="random", batch_per_device=2, checkpoint_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = ef.embed_folder(cfg, log=lambda _: None)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert (summary["done"], summary["failed"]) == (2, 4)
    reasons = {k: json.load(open(os.path.join(cfg.out, "failed", k + ".json"))) for k in
               ("bomb_png", "large_png", "oom_png", "odd_png")}
    assert "too large to decode safely" in reasons["bomb_png"]["reason"]
    assert "60x60, the generator needs 32x32" in reasons["large_png"]["reason"]
    assert "not enough memory" in reasons["oom_png"]["reason"] and "traceback" not in reasons["oom_png"]
    assert reasons["odd_png"]["reason"].startswith("error: unpack requires") and \
        "struct.error" in reasons["odd_png"]["traceback"]
    assert json.load(open(os.path.join(cfg.out, "results", "a_png", "metrics.json")))["image"] == "a.png"
    assert json.load(open(os.path.join(cfg.out, "results", "a_png.d", "x_png", "metrics.json")))["image"] == \
        "a_png/x.png"
    assert "x_png" not in os.listdir(os.path.join(cfg.out, "results", "a_png"))


def test_another_generator_at_the_same_path_is_refused(tmp_path):
    import dataclasses
    import shutil

    import jax

    from experiments import embed_folder as ef

    G = checkpoint.load_generator("demo")
    gdir = str(tmp_path / "g")
    checkpoint.save_generator(G, gdir)
    root = str(tmp_path / "images")
    os.makedirs(root)
    shipped = checkpoint.heldout_images()
    Image.open(shipped[0]).save(os.path.join(root, "a.png"))
    cfg = ef.FolderConfig(images=root, out=str(tmp_path / "out"), generator=gdir, preset="smoke", w_steps=1,
                          noise_steps=1, percept=0.0, vgg="random", checkpoint_every=0)
    assert ef.embed_folder(cfg, log=lambda _: None)["done"] == 1
    assert json.load(open(os.path.join(cfg.out, "run.json")))["generator_digest"] == cli.generator_digest(G)
    shutil.rmtree(gdir)
    checkpoint.save_generator(dataclasses.replace(G, params=jax.tree.map(lambda p: p * 1.05, G.params)), gdir)
    Image.open(shipped[1]).save(os.path.join(root, "b.png"))
    with pytest.raises(cli.UserError, match="holds a run with another generator"):
        ef.embed_folder(cfg, log=lambda _: None)
    assert not os.path.exists(os.path.join(cfg.out, "results", "b_png"))


def test_progress_ends_on_the_final_counts():
    s = _Stream()
    p = Progress(3, done_before=0, failed_before=0, stream=s)
    p.finished(done=1)
    p.finished(failed=1)
    p.finished(failed=1)  # failures alone redraw a log's line at most every 30 s
    p.close()
    assert s.text.splitlines()[-1].endswith("3/3 images (2 failed) | 0 images/s | ETA --:--")


def test_a_run_in_which_every_image_fails_is_an_error_in_one_line(env):
    """Exit status 2, one line on stderr (no absl INFO line of JAX's backends before it), the bar final."""
    root = str(env["base"] / "all_bad")
    os.makedirs(root)
    open(os.path.join(root, "fake.jpg"), "w").write("not a picture")
    Image.new("RGB", (64, 64)).save(os.path.join(root, "big.png"))
    out = str(env["base"] / "all_bad_out")
    cmd, penv = command(root, out, cache=env["cache"])
    p = subprocess.run(cmd, cwd=ROOT, env=penv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.splitlines() == [f"error: all 2 images of --images={root} failed; the reasons are in "
                                     f"{out}/failed/ and {out}/manifest.json"], p.stderr
    bars = [line for line in p.stdout.splitlines() if "images/s | ETA" in line]
    assert bars[-1].endswith("2/2 images (2 failed) | 0 images/s | ETA --:--"), p.stdout
    assert sorted(os.listdir(os.path.join(out, "failed"))) == ["big_png.json", "fake_jpg.json"]


def test_a_second_run_into_a_folder_in_use_is_refused(env, tmp_path):
    """Process 0 holds OUT/.lock: a second embed_folder into the same --out (here, while this test holds
    the lock) is refused in one line before it reads or writes anything there."""
    out = str(tmp_path / "out")
    cli.prepare_out(out, {"settings": {}}, fresh=False, lock=True, log=lambda _: None)
    cmd, penv = command(env["images"], out, cache=env["cache"])
    p = subprocess.run(cmd, cwd=ROOT, env=penv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"error: another command is running in {out} now; wait for it to end (rerun the same command afterwards "
        "to resume or finish), or choose another --out"], p.stderr[-2000:]
    assert sorted(os.listdir(out)) == [cli.LOCK_FILE, cli.RUN_FILE]
