"""Feature transfer's averaging and channel copy (op="average", op="channel"): the library at the
ends of each operation (all from a gives a's rendering, all from b gives b's), its refusals naming
what is wrong, the channel count on both generator kinds, and both operations from the command line
(they crashed there: the average's λ was written as a mask image, the channel copy got the spatial
mask in place of its bits)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import i2spp_jax
from i2spp_jax import apps, io, layers
from i2spp_jax.apps.feature_transfer import channel_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = apps.RunOptions(log=None)
ATOL = 1e-5  # float32: the same image rendered through the edited and the plain program


@pytest.fixture(scope="module")
def G():
    return i2spp_jax.load_generator("demo")


def variables(G, seed):
    """Batched [1, ...] variables: W+ of a random z, random noise maps."""
    return {"w_plus": G.mapping(jax.random.normal(jax.random.PRNGKey(seed), (1, G.z_dim))),
            "noise": G.make_noise(jax.random.PRNGKey(seed + 1), batch=1)}


@pytest.fixture(scope="module")
def pair(G):
    """(va, vb, a's rendering, b's rendering), each rendering [H, W, C] in [-1, 1]."""
    va, vb = variables(G, 41), variables(G, 43)
    return va, vb, apps.common.render(G, va)[0], apps.common.render(G, vb)[0]


def transfer(G, pair, operand, op, point=None):
    va, vb, ra, rb = pair
    return apps.feature_transfer(G, ra, rb, operand, vgg=None, op=op, point=point, embeddings=(va, vb), run=QUIET)


def test_average_at_its_ends_gives_each_rendering(G, pair):
    _, _, ra, rb = pair
    last = f"b{G.img_resolution}.img"  # the block's whole output: nothing of a's after it
    r = transfer(G, pair, 1.0, "average")  # at the paper's 4th layer: a's tensor, a's later layers
    np.testing.assert_allclose(r.images["transfer"][0], ra, atol=ATOL)
    assert r.masks == {} and r.settings["lam"] == 1.0 and r.settings["op"] == "average"
    np.testing.assert_allclose(transfer(G, pair, 1.0, "average", last).images["transfer"][0], ra, atol=ATOL)
    np.testing.assert_allclose(transfer(G, pair, np.zeros(1), "average", last).images["transfer"][0], rb,
                               atol=ATOL)
    half = transfer(G, pair, 0.5, "average", last).images["transfer"][0]
    assert np.abs(half - ra).mean() > 1e-2 and np.abs(half - rb).mean() > 1e-2  # neither image alone


def test_channel_bits_at_their_ends_give_each_rendering(G, pair):
    _, _, ra, rb = pair
    last = f"b{G.img_resolution}.img"
    C = channel_count(G, last)
    r = transfer(G, pair, np.ones(C), "channel", last)
    np.testing.assert_allclose(r.images["transfer"][0], ra, atol=ATOL)
    assert r.masks == {} and r.settings["channels"] == [1] * C and r.settings["channels_from_a"] == C
    np.testing.assert_allclose(transfer(G, pair, np.zeros(C), "channel", last).images["transfer"][0], rb, atol=ATOL)
    point = layers.activation_point(G, layers.FEATURE_TRANSFER_LAYER)
    np.testing.assert_allclose(transfer(G, pair, np.ones(channel_count(G, point)), "channel").images["transfer"][0],
                               ra, atol=ATOL)


@pytest.mark.parametrize("op, operand, words", [
    ("channel", np.ones(5), "the tensor at 'b8.conv0' has C = 64 channels"),
    ("channel", np.ones((32, 32)), "has C = 64 channels"),  # the spatial mask given to the channel copy
    ("channel", np.full(64, 2.0), "must lie in [0, 1]"),
    ("average", np.ones((32, 32)), "expected a scalar or [1] in [0, 1]"),
    ("average", -0.5, "must lie in [0, 1]"),
])
def test_a_wrong_operand_is_refused_by_name(G, pair, op, operand, words):
    va, vb, _, _ = pair
    with pytest.raises(ValueError, match=words.replace("[", "\\[").replace("]", "\\]")):
        transfer(G, pair, operand, op)
    with pytest.raises(ValueError, match=words.replace("[", "\\[").replace("]", "\\]")):
        apps.combine(G, va, vb, operand, point="b8.conv0", op=op)


def test_channel_count_on_both_generator_kinds(G, tf_dir):
    G1 = i2spp_jax.load_generator(os.path.join(tf_dir, "sg1_r32.pkl"))
    assert type(G).__name__ == "Generator" and type(G1).__name__ == "StyleGAN1Generator"
    for g in (G, G1):
        _, acts = g.synthesis(variables(g, 0)["w_plus"], return_activations=True)
        for point in g.config.activation_names:
            assert channel_count(g, point) == acts[point.replace(".img", ".x")].shape[-1], point
    with pytest.raises(ValueError, match="activation point 'b8.img'"):  # a StyleGAN2 point
        channel_count(G1, "b8.img")


def test_carries_skip_says_where_a_skip_image_comes_with_the_tensor(G, tf_dir):
    """The command's "features only (no skip image)" comparison is drawn only where there is a skip
    image to leave out: on a StyleGAN (v1) it repeated the I_att column (audit)."""
    from i2spp_jax import activations
    from i2spp_jax.apps.feature_transfer import carries_skip

    G1 = i2spp_jax.load_generator(os.path.join(tf_dir, "sg1_r32.pkl"))
    for g in (G, G1):
        _, acts = g.synthesis(variables(g, 0)["w_plus"], return_activations=True)
        for point in g.config.activation_names:
            assert carries_skip(g, point) == (activations.capture(acts, point)["img"] is not None), point
    assert carries_skip(G, "b8.x") and not carries_skip(G1, "b8.x")


def run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.feature_transfer", "--smoke", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


WHOLE = {"point", "op", "psnr_vs_a_rendering", "psnr_vs_b_rendering", "psnr_embedding_a", "psnr_embedding_b"}
TRUE = {"true_latents_psnr_vs_a", "true_latents_psnr_vs_b"}


@pytest.mark.parametrize("op, app_settings", [
    ("average", {"lam": 0.5}),
    ("channel", {"channels_from_a": 32, "channels": [1] * 32 + [0] * 32}),  # 64 channels at b8.conv0, f = 0.5
])
def test_the_demo_runs_each_operation(op, app_settings, tmp_path):
    out = tmp_path / op
    p = run(f"--op={op}", f"--out={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["measured"]) == WHOLE | TRUE
    assert all(np.isfinite(m["measured"][k]) for k in (WHOLE | TRUE) - {"point", "op"})
    assert {k: m["app_settings"][k] for k in app_settings} == app_settings
    assert not (out / "inputs" / "mask.png").exists() and not (out / "outputs" / "mask_mask.png").exists()
    assert (out / "grid.png").exists() and (out / "outputs" / "true_latents.png").exists()


def test_a_users_images_need_no_mask_for_the_channel_copy(tmp_path):
    G = i2spp_jax.load_generator("demo")
    for name, seed in (("a", 41), ("b", 43)):
        io.save_image(str(tmp_path / f"{name}.png"), apps.common.render(G, variables(G, seed))[0])
    out = tmp_path / "out"
    p = run("--op=channel", "--channel_fraction=0.25", f"--a={tmp_path / 'a.png'}", f"--b={tmp_path / 'b.png'}",
            "--mask=half:left", f"--out={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "--op=channel does not use --mask" in p.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["measured"]) == WHOLE and m["app_settings"]["channels_from_a"] == 16
    assert "--mask" not in m["inputs"]


def test_an_unknown_point_is_refused_before_the_embedding(G, pair, monkeypatch):
    """--point=b999.x was refused only after the embedding had run (found by an audit)."""
    ft = sys.modules["i2spp_jax.apps.feature_transfer"]  # the module (apps.feature_transfer is the function)

    def no_embedding(*a, **k):
        raise AssertionError("embedded before checking the point")

    monkeypatch.setattr(ft, "reconstruct_w", no_embedding)
    _, _, ra, rb = pair
    with pytest.raises(ValueError, match="activation point 'b999.x': use one of"):
        apps.feature_transfer(G, ra, rb, np.ones((32, 32)), vgg=None, point="b999.x", run=QUIET)
