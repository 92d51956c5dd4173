"""Training the project's own generators: the discriminator, the losses, the loop and its resume."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments import train_generator as T
from i2spp_jax import datasets, discriminator, training
from i2spp_jax.generator import GeneratorConfig

TINY_G = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channels=(16, 16, 8), mapping_layers=2)
TINY = training.TrainConfig(g=TINY_G, d_channels=(8, 16, 16), batch=8, r1_gamma=0.01, ema_kimg=0.1)


def _run(tmp_path, name="run", kimg=0.08, **kw):
    return T.RunConfig(train=dataclasses.replace(TINY, **kw), data="toy", out=str(tmp_path / name),
                       kimg=kimg, log_every=5, sample_every=5, checkpoint_every=5)


def test_minibatch_stddev_matches_numpy():
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 6)).astype(np.float32)
    got = np.asarray(discriminator.minibatch_stddev(jnp.asarray(x), group_size=4, num_channels=2))
    # The official grouping: sample n belongs to group n mod (N / G); statistics per channel half.
    y = x.reshape(4, 2, 4, 4, 2, 3)
    sd = np.sqrt(((y - y.mean(0)) ** 2).mean(0) + 1e-8).mean(axis=(1, 2, 4))  # [2, 2]
    want = np.tile(sd, (4, 1))  # [8, 2]
    np.testing.assert_allclose(got[..., :6], x)
    np.testing.assert_allclose(got[..., 6:], np.broadcast_to(want[:, None, None, :], (8, 4, 4, 2)), rtol=1e-5)


def test_discriminator_downsamples_like_the_reference_filter():
    layer = discriminator.Conv2dLayer(1, kernel_size=1, down=2, bias=False, activation="linear")
    x = jnp.ones((1, 8, 8, 1))
    params = {"weight": jnp.ones((1, 1, 1, 1))}
    y = np.asarray(layer.apply({"params": params}, x))
    assert y.shape == (1, 4, 4, 1)
    # upfirdn2d(down=2, padding=1) with [1,3,3,1]/8: a constant image stays constant inside; the
    # first and last outputs each miss one outer tap (1/8) to the zero padding.
    edge = np.array([7 / 8, 1, 1, 7 / 8])
    np.testing.assert_allclose(y[0, :, :, 0], np.outer(edge, edge), rtol=1e-6)


def test_r1_is_the_squared_input_gradient_of_d():
    state = training.init_state(TINY)
    reals = jnp.asarray(datasets.to_float(datasets.toy_set(8, 16)))
    fakes = jnp.zeros_like(reals)
    # compiled: op by op, the R1 term's double backward took 30-60 s here
    d_loss = jax.jit(training._d_loss, static_argnums=(1, 4))
    _, m = d_loss(state["D"], TINY, fakes, reals, True)
    D = TINY.discriminator()
    g = jax.jit(jax.grad(lambda x: jnp.sum(D.apply({"params": state["D"]}, x))))(reals)
    np.testing.assert_allclose(float(m["R1"]), float(jnp.mean(jnp.sum(g**2, axis=(1, 2, 3)))), rtol=1e-5)
    assert float(m["R1"]) > 0


@pytest.mark.slow  # 30 training steps end to end
def test_a_few_steps_lower_the_discriminator_loss_and_stay_finite():
    state = training.init_state(TINY)
    images = datasets.toy_set(64, 16)
    probe = jnp.asarray(datasets.to_float(images[:8]))
    key = jax.random.PRNGKey(7)
    before = float(training.d_loss_on(TINY, state, probe, key))
    noise_const = np.asarray(state["G"]["synthesis"]["b8"]["conv0"]["noise_const"])
    for step in range(30):
        reals = jnp.asarray(datasets.to_float(images[datasets.batch_indices(64, 8, step)]))
        state, m = training.train_step(TINY, state, reals, step % TINY.r1_interval == 0)
        assert bool(m["finite"]), (step, m)
    after = float(training.d_loss_on(TINY, state, probe, key))
    assert np.isfinite(after) and after < before - 0.1, (before, after)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
    # Buffers are not trained; w_avg tracks the mapping output.
    np.testing.assert_array_equal(state["G"]["synthesis"]["b8"]["conv0"]["noise_const"], noise_const)
    assert float(jnp.abs(state["G"]["mapping"]["w_avg"]).sum()) > 0
    assert int(state["step"]) == 30


def test_ema_follows_the_official_half_life():
    cfg = dataclasses.replace(TINY, ema_kimg=10.0, ema_rampup=None, batch=32)
    np.testing.assert_allclose(float(training.ema_beta(cfg, 1e6)), 0.5 ** (32 / 10000), rtol=1e-6)
    ramped = dataclasses.replace(cfg, ema_rampup=0.05)
    np.testing.assert_allclose(float(training.ema_beta(ramped, 3200.0)), 0.5 ** (32 / 160), rtol=1e-6)


def test_batches_are_a_pure_function_of_the_step():
    a = datasets.batch_indices(10, 4, 2, seed=3)  # positions 8..11: crosses into the second epoch
    assert len(a) == 4 and np.array_equal(a, datasets.batch_indices(10, 4, 2, seed=3))
    epoch0 = np.concatenate([datasets.batch_indices(10, 5, s, seed=3) for s in range(2)])
    assert sorted(epoch0) == list(range(10))


@pytest.mark.slow  # an end-to-end run (60-75 s on the 2-core CPU): `pytest -m slow`
def test_resume_continues_bit_identically(tmp_path):
    straight = T.train(_run(tmp_path, "a"), log=lambda m: None)
    assert straight["step"] == 10
    T.train(_run(tmp_path, "b"), steps=5, log=lambda m: None)
    assert not os.path.exists(tmp_path / "b" / "generator")
    resumed = T.train(_run(tmp_path, "b"), log=lambda m: None)
    for x, y in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(straight["history"]["G_loss"], resumed["history"]["G_loss"])
    for f in ("losses.png", "samples_latest.png", "samples/000010.png", "history.npz", "generator/config.json"):
        assert os.path.exists(tmp_path / "b" / f), f


def test_refuses_an_out_dir_holding_another_run(tmp_path):
    # steps=0 writes the run's settings without training (5 steps cost 75 s of compiling here); the
    # refusal reads only those. The folder is left as it was.
    cfg = _run(tmp_path, "c")
    T.train(cfg, steps=0, log=lambda m: None)

    def files():
        return {p: open(os.path.join(cfg.out, p), "rb").read() for p in os.listdir(cfg.out)
                if os.path.isfile(os.path.join(cfg.out, p))}

    before = files()
    assert cli.RUN_FILE in before
    with pytest.raises(cli.UserError, match="other settings \\(lr\\)"):
        T.train(_run(tmp_path, "c", lr=0.001), log=lambda m: None)
    assert files() == before


def test_cli_reports_a_missing_data_folder_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.train_generator", f"--data={tmp_path}/nope",
                           f"--out={tmp_path}/o"], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "nope" in proc.stderr


def test_idx_reader_refuses_a_truncated_file(tmp_path):
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(header + bytes(100))
    with pytest.raises(datasets.DatasetError, match="truncated"):
        datasets.read_idx(str(p))
    p.write_bytes(header + bytes(2 * 28 * 28))
    assert datasets.read_idx(str(p)).shape == (2, 28, 28)


def test_image_folder_crops_resizes_and_names_a_bad_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    x = datasets.image_folder(str(tmp_path), 16)
    assert x.shape == (2, 16, 16, 3) and x.dtype == np.uint8
    assert np.array_equal(x[1, ..., 0], x[1, ..., 2])  # grey converted to RGB
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(datasets.DatasetError, match="c.png"):
        datasets.image_folder(str(tmp_path), 16)


def test_train_refuses_images_of_the_wrong_size(tmp_path):
    with pytest.raises(cli.UserError, match="the generator makes"):
        T.train(_run(tmp_path), images=datasets.toy_set(16, 32), log=lambda m: None)


@pytest.mark.parametrize("args, words", [
    (["--resolution=48"], ["--resolution=48", "power of two"]),  # a ValueError traceback
    (["--resolution=64"], ["a 64x64 generator has 5 blocks", "(got 4 and 4)"]),  # a ValueError traceback
    (["--channels=a,b,c,d"], ["--channels", "positive integers"]),  # int()'s traceback
    (["--batch=0"], ["--batch=0"]),  # ZeroDivisionError
    (["--r1_interval=0"], ["--r1_interval=0"]),  # ZeroDivisionError
    (["--lr=-1"], ["--lr=-1", "> 0"]),  # trained until the loss was NaN
    (["--ema_kimg=-1"], ["--ema_kimg=-1", "> 0"]),  # trained on
    (["--style_mixing_prob=2"], ["--style_mixing_prob=2", "[0, 1]"]),  # trained on
])
def test_train_generator_refuses_bad_settings_at_start_up(tmp_path, args, words):
    """Audit (train_generator): each of these was a traceback, or a run that trained on to a NaN or forever."""
    from test_cli import assert_one_line_error, run_cli

    p, _ = run_cli("experiments.train_generator", f"--out={tmp_path / 'o'}", *args)
    assert_one_line_error(p, *words)
    assert not (tmp_path / "o").exists()
