"""Converters: pickles read without running anything, state dicts, round trips, and every error."""

import collections
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

import i2spp_jax
from i2spp_jax.formats import stylegan2, torch_pickle

torch = pytest.importorskip("torch", reason="these tests write PyTorch files with torch")


def _ada_files(parity_dir, name):
    weights = dict(np.load(os.path.join(parity_dir, f"{name}.weights.npz")))
    ref = dict(np.load(os.path.join(parity_dir, f"{name}.reference.npz")))
    import json

    with open(os.path.join(parity_dir, f"{name}.json")) as f:
        meta = json.load(f)
    return weights, ref, meta


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


# --- ada network pickles, written the way stylegan2-ada-pytorch writes them ------------------------

class _FakeModules:
    """Registers stand-ins for `torch_utils.persistence` and `dnnlib.util` so that pickle records the
    same globals a stylegan2-ada-pytorch snapshot does. Only the writer sees them; the reader must not."""

    def __enter__(self):
        self.saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
        persistence = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta):  # never called by our reader
            raise AssertionError("the reader ran the pickle's reconstruct function")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
        util = types.ModuleType("dnnlib.util")

        class EasyDict(dict):
            pass

        EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
        util.EasyDict = EasyDict
        sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
        self.reconstruct, self.EasyDict = _reconstruct_persistent_obj, EasyDict
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Persistent:
    """Pickles like a @persistent_class module: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, class_name, state, module_src):
        self.args = (reconstruct, dict(type="class", version=4, module_src=module_src,
                                       class_name=class_name, state=state))

    def __reduce__(self):
        return self.args[0], (self.args[1],)


def _module_tree(fake, weights: dict, init_kwargs: dict, module_src: str):
    """G_ema as nested persistent modules with torch tensors, from a flat ada state dict."""
    tree: dict = {}
    for key, value in weights.items():
        node = tree
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value

    def build(name, node, kwargs=None):
        params, buffers, modules = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
        for k, v in node.items():
            if isinstance(v, dict):
                modules[k] = build(k, v)
            elif k in ("noise_const", "resample_filter", "w_avg"):
                buffers[k] = torch.from_numpy(v)
            else:
                params[k] = torch.nn.Parameter(torch.from_numpy(v), requires_grad=False)
        state = {"training": False, "_parameters": params, "_buffers": buffers, "_modules": modules,
                 "_non_persistent_buffers_set": set(), "_forward_hooks": collections.OrderedDict(),
                 "weight_gain": np.float64(0.25)}
        if kwargs is not None:
            state["_init_kwargs"] = fake.EasyDict(kwargs)
        return _Persistent(fake.reconstruct, name, state, module_src)

    return build("Generator", tree, init_kwargs)


@pytest.mark.parametrize("name", ["ada_tiny", "ada_clamp"])
def test_ada_pickle_converts_without_running_its_code(parity_dir, tmp_path, name):
    weights, ref, meta = _ada_files(parity_dir, name)
    marker = tmp_path / "pwned"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    path = tmp_path / "network-snapshot.pkl"
    with _FakeModules() as fake:
        G_ema = _module_tree(fake, weights, meta["init_kwargs"], src)
        with open(path, "wb") as f:
            pickle.dump({"G": G_ema, "D": None, "G_ema": G_ema, "training_set_kwargs": {"path": "x"}}, f)
    G = i2spp_jax.load_generator(str(path))
    assert not marker.exists()
    assert G.config.conv_clamp == meta["init_kwargs"]["synthesis_kwargs"]["conv_clamp"]
    img = np.asarray(G.synthesis(ref["ws_plus"], noise="const")).transpose(0, 3, 1, 2)
    assert _rel(img, ref["img_const"]) < 1e-5


def test_pickle_naming_os_system_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(torch_pickle.UnsafePickleError, match=r"posix\.system|os\.system"):
        stylegan2.convert_file(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins.eval", "subprocess.Popen", "torch_utils.persistence._src_to_module"])
def test_any_other_global_is_refused_by_name(tmp_path, global_name):
    module, name = global_name.rsplit(".", 1)
    # A protocol-0 pickle calling module.name('x'): GLOBAL, MARK, STRING, TUPLE, REDUCE, STOP.
    data = f"c{module}\n{name}\n(S'x'\ntR.".encode()
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    with pytest.raises(torch_pickle.UnsafePickleError, match=global_name.replace(".", r"\.")):
        torch_pickle.load_file(str(path))


# --- state dicts and rosinality ---------------------------------------------------------------

def test_ada_state_dict_pt_with_json_beside(parity_dir, tmp_path):
    weights, ref, meta = _ada_files(parity_dir, "ada_clamp")
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "G.pt")
    (tmp_path / "G.json").write_text(__import__("json").dumps(meta))
    G = stylegan2.convert_file(str(tmp_path / "G.pt"))
    assert G.config.conv_clamp == 0.5
    assert _rel(np.asarray(G.synthesis(ref["ws_plus"])).transpose(0, 3, 1, 2), ref["img_const"]) < 1e-5


def test_ada_state_dict_needs_conv_clamp(parity_dir, tmp_path):
    weights, ref, _ = _ada_files(parity_dir, "ada_clamp")
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "G.pt")
    with pytest.raises(stylegan2.ConversionError, match="conv_clamp"):
        stylegan2.convert_file(str(tmp_path / "G.pt"))
    G = stylegan2.convert_file(str(tmp_path / "G.pt"), conv_clamp="0.5")
    assert _rel(np.asarray(G.synthesis(ref["ws_plus"])).transpose(0, 3, 1, 2), ref["img_const"]) < 1e-5


def test_legacy_torch_save_stream(parity_dir, tmp_path):
    weights, ref, _ = _ada_files(parity_dir, "ada_tiny")
    path = tmp_path / "legacy.pt"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, path, _use_new_zipfile_serialization=False)
    G = stylegan2.convert_file(str(path), conv_clamp="none")
    assert _rel(np.asarray(G.synthesis(ref["ws_plus"])).transpose(0, 3, 1, 2), ref["img_const"]) < 1e-5


def test_round_trip_file_orbax_load_is_identical(parity_dir, tmp_path):
    _, ref, _ = _ada_files(parity_dir, "ada_tiny")
    G = stylegan2.convert_file(os.path.join(parity_dir, "ada_tiny.weights.npz"))
    i2spp_jax.save_generator(G, str(tmp_path / "ck"))
    G2 = i2spp_jax.load_generator(str(tmp_path / "ck"))
    assert G2.config == G.config
    np.testing.assert_array_equal(G2.synthesis(ref["ws_plus"]), G.synthesis(ref["ws_plus"]))
    np.testing.assert_array_equal(G2.mapping(ref["z"], 0.7), G.mapping(ref["z"], 0.7))
    with pytest.raises(FileExistsError):
        i2spp_jax.save_generator(G, str(tmp_path / "ck"))


def test_cli_converts_and_checks_itself(parity_dir, tmp_path):
    dst = tmp_path / "out"
    out = subprocess.run(
        [sys.executable, "-m", "converters.stylegan2", f"--src={parity_dir}/ada_clamp.weights.npz", f"--dst={dst}"],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    ).stdout
    assert "self-check reload_max_abs_diff: 0" in out
    rel = float(out.split("self-check reference_rel_error: ")[1].split()[0])
    assert rel < 1e-5
    assert (dst / "config.json").exists()


# --- errors that name their cause ----------------------------------------------------------------

@pytest.fixture
def tiny_weights(parity_dir):
    return _ada_files(parity_dir, "ada_tiny")


def _convert_dict(tmp_path, weights, **kw):
    path = tmp_path / "sd.npz"
    np.savez(path, **weights)
    return stylegan2.convert_file(str(path), conv_clamp="none", **kw)


def test_missing_key_is_named(tmp_path, tiny_weights):
    weights = dict(tiny_weights[0])
    del weights["synthesis.b16.conv0.affine.bias"]
    with pytest.raises(stylegan2.ConversionError, match=r"missing key synthesis\.b16\.conv0\.affine\.bias"):
        _convert_dict(tmp_path, weights)


def test_unused_key_is_named(tmp_path, tiny_weights):
    weights = dict(tiny_weights[0], **{"synthesis.b16.conv0.extra_gain": np.ones(3, np.float32)})
    with pytest.raises(stylegan2.ConversionError, match=r"unused key synthesis\.b16\.conv0\.extra_gain"):
        _convert_dict(tmp_path, weights)


def test_shape_mismatch_is_named(tmp_path, tiny_weights):
    weights = dict(tiny_weights[0])
    weights["synthesis.b8.conv1.weight"] = weights["synthesis.b8.conv1.weight"][:, :, :2, :2]
    with pytest.raises(stylegan2.ConversionError, match=r"shape mismatch for synthesis\.b8\.conv1\.weight"):
        _convert_dict(tmp_path, weights)


def test_wrong_resample_filter_is_refused(tmp_path, tiny_weights):
    weights = dict(tiny_weights[0])
    weights["synthesis.b8.resample_filter"] = np.full((4, 4), 1 / 16, np.float32)
    with pytest.raises(stylegan2.ConversionError, match=r"synthesis\.b8\.resample_filter"):
        _convert_dict(tmp_path, weights)


def test_unknown_format(tmp_path):
    np.savez(tmp_path / "other.npz", **{"encoder.layer1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(stylegan2.UnknownFormatError, match="unknown checkpoint format"):
        stylegan2.convert_file(str(tmp_path / "other.npz"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match="neither a pickle nor a zip"):
        stylegan2.convert_file(str(tmp_path / "text.pt"))


@pytest.mark.parametrize("kind", ["pkl", "zip", "npz"])
def test_truncated_file(parity_dir, tmp_path, kind):
    weights, _, _ = _ada_files(parity_dir, "ada_tiny")
    path = tmp_path / f"full.{ 'pt' if kind == 'zip' else kind}"
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    if kind == "pkl":
        path.write_bytes(pickle.dumps({"G_ema": tensors}))
    elif kind == "zip":
        torch.save(tensors, path)
    else:
        np.savez(path, **weights)
    cut = tmp_path / f"cut{path.suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(torch_pickle.TruncatedFileError):
        stylegan2.convert_file(str(cut), conv_clamp="none")


def test_conditional_generator_is_refused(tmp_path, tiny_weights):
    weights = dict(tiny_weights[0], **{"mapping.embed.weight": np.zeros((32, 10), np.float32)})
    with pytest.raises(stylegan2.ConversionError, match="conditional"):
        _convert_dict(tmp_path, weights)


# --- full-size checkpoints: 1024x1024, 18 ws, 17 noise maps, 512-wide w ---------------------------

def _ffhq_ada_shapes() -> dict:
    """Key -> shape of stylegan2-ada-pytorch's FFHQ config-f G_ema (channel_base 32768, max 512)."""
    ch = {r: min(32768 // r, 512) for r in [2**i for i in range(2, 11)]}
    s = {"mapping.w_avg": (512,)}
    for i in range(8):
        s[f"mapping.fc{i}.weight"], s[f"mapping.fc{i}.bias"] = (512, 512), (512,)
    for r in ch:
        b = f"synthesis.b{r}"
        s[f"{b}.resample_filter"] = (4, 4)
        convs = ["conv1"] if r == 4 else ["conv0", "conv1"]
        if r == 4:
            s[f"{b}.const"] = (512, 4, 4)
        for c in convs:
            cin = ch[r // 2] if c == "conv0" else ch[r]
            s.update({f"{b}.{c}.weight": (ch[r], cin, 3, 3), f"{b}.{c}.bias": (ch[r],),
                      f"{b}.{c}.noise_strength": (), f"{b}.{c}.noise_const": (r, r),
                      f"{b}.{c}.resample_filter": (4, 4), f"{b}.{c}.affine.weight": (cin, 512),
                      f"{b}.{c}.affine.bias": (cin,)})
        s.update({f"{b}.torgb.weight": (3, ch[r], 1, 1), f"{b}.torgb.bias": (3,),
                  f"{b}.torgb.affine.weight": (ch[r], 512), f"{b}.torgb.affine.bias": (ch[r],)})
    return s


def _ffhq_rosinality_shapes() -> dict:
    """Key -> shape of rosinality's 1024 Generator (style_dim 512, n_mlp 8, channel_multiplier 2)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    s = {}
    for i in range(1, 9):
        s[f"style.{i}.weight"], s[f"style.{i}.bias"] = (512, 512), (512,)
    s["input.input"] = (1, 512, 4, 4)

    def styled(prefix, cin, cout, up):
        s.update({f"{prefix}.conv.weight": (1, cout, cin, 3, 3), f"{prefix}.conv.modulation.weight": (cin, 512),
                  f"{prefix}.conv.modulation.bias": (cin,), f"{prefix}.noise.weight": (1,),
                  f"{prefix}.activate.bias": (cout,)})
        if up:
            s[f"{prefix}.conv.blur.kernel"] = (4, 4)

    def rgb(prefix, cin, up):
        s.update({f"{prefix}.conv.weight": (1, 3, cin, 1, 1), f"{prefix}.conv.modulation.weight": (cin, 512),
                  f"{prefix}.conv.modulation.bias": (cin,), f"{prefix}.bias": (1, 3, 1, 1)})
        if up:
            s[f"{prefix}.upsample.kernel"] = (4, 4)

    styled("conv1", 512, 512, False)
    rgb("to_rgb1", 512, False)
    s["noises.noise_0"] = (1, 1, 4, 4)
    for i, r in enumerate([8, 16, 32, 64, 128, 256, 512, 1024]):
        styled(f"convs.{2 * i}", ch[r // 2], ch[r], True)
        styled(f"convs.{2 * i + 1}", ch[r], ch[r], False)
        rgb(f"to_rgbs.{i}", ch[r], True)
        s[f"noises.noise_{2 * i + 1}"] = s[f"noises.noise_{2 * i + 2}"] = (1, 1, r, r)
    return s


def _filled(shapes: dict, filter_gain: float) -> dict:
    rng = np.random.RandomState(0)
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64 * filter_gain
    return {k: (f if k.endswith(("resample_filter", "kernel")) else np.asarray(rng.randn(*v), np.float32))
            for k, v in shapes.items()}


def _check_ffhq(G):
    assert (G.img_resolution, G.num_ws, G.w_dim, len(G.noise_shapes)) == (1024, 18, 512, 17)
    assert G.noise_shapes[-1] == (1024, 1024)
    assert G.params["synthesis"]["b1024"]["conv1"]["weight"].shape == (3, 3, 32, 32)


def test_ffhq_sized_ada_state_dict_converts(tmp_path):
    sd = _filled(_ffhq_ada_shapes(), 1.0)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "ffhq.pt")
    G = stylegan2.convert_file(str(tmp_path / "ffhq.pt"), conv_clamp="none")
    _check_ffhq(G)
    np.testing.assert_array_equal(G.params["synthesis"]["b64"]["conv0"]["weight"],
                                  sd["synthesis.b64.conv0.weight"].transpose(2, 3, 1, 0))


def test_ffhq_sized_rosinality_checkpoint_converts(tmp_path):
    sd = _filled(_ffhq_rosinality_shapes(), 4.0)
    torch.save({"g_ema": {k: torch.from_numpy(v) for k, v in sd.items()},
                "latent_avg": torch.zeros(512), "args": __import__("argparse").Namespace(size=1024)},
               tmp_path / "550000.pt")
    G = stylegan2.convert_file(str(tmp_path / "550000.pt"))
    _check_ffhq(G)
    np.testing.assert_array_equal(G.params["synthesis"]["b1024"]["conv1"]["noise_const"], sd["noises.noise_16"][0, 0])


def test_load_generator_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no generator at"):
        i2spp_jax.load_generator(str(tmp_path / "nothing_here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        i2spp_jax.load_generator(str(tmp_path / "empty"))


# --- networks of another kind: refused by name, never converted into something else --------------

def _snapshot(tmp_path, weights, init_kwargs, module_src="", name="snap.pkl", **networks):
    """A stylegan2-ada-pytorch snapshot pickle; `networks` maps G / D / G_ema to weights (or None)."""
    path = tmp_path / name
    with _FakeModules() as fake:
        nets = {k: (None if w is None else _module_tree(fake, w, init_kwargs, module_src)) for k, w in networks.items()}
        if not networks:
            nets = {"G_ema": _module_tree(fake, weights, init_kwargs, module_src)}
        with open(path, "wb") as f:
            pickle.dump(dict(nets, training_set_kwargs={"path": "x"}), f)
    return str(path)


@pytest.mark.parametrize("part, setting, value, message", [
    ("mapping_kwargs", "activation", "relu", "mapping activation 'relu' is not supported"),
    ("synthesis_kwargs", "activation", "relu", "synthesis activation 'relu' is not supported"),
    ("synthesis_kwargs", "use_noise", False, r"use_noise False is not supported.*noise maps"),
    ("synthesis_kwargs", "architecture", "orig", "synthesis architecture 'orig' is not supported"),
    ("synthesis_kwargs", "resample_filter", [1, 2, 1], r"resample_filter \[1, 2, 1\] is not supported"),
    ("synthesis_kwargs", "kernel_size", 1, "kernel_size 1 is not supported"),
    ("synthesis_kwargs", "magnitude_ema_beta", 0.999, r"unknown generator setting\(s\) synthesis_kwargs\.magnitude"),
    (None, "c_dim", 10, "conditional"),
])  # fmt: skip
def test_a_setting_the_port_does_not_compute_is_refused_by_name(parity_dir, tmp_path, part, setting, value, message):
    """The weights alone convert (same shapes); only init_kwargs says the network computes another thing."""
    weights, _, meta = _ada_files(parity_dir, "ada_tiny")
    kwargs = __import__("copy").deepcopy(meta["init_kwargs"])
    (kwargs.setdefault(part, {}) if part else kwargs)[setting] = value
    with pytest.raises(stylegan2.ConversionError, match=message):
        stylegan2.convert_file(_snapshot(tmp_path, weights, kwargs))
    # the defaults, said out loud, are accepted
    kwargs = __import__("copy").deepcopy(meta["init_kwargs"])
    kwargs["mapping_kwargs"].update(activation="lrelu", w_avg_beta=0.995)
    kwargs["synthesis_kwargs"].update(activation="lrelu", use_noise=True, architecture="skip",
                                      resample_filter=(1, 3, 3, 1), kernel_size=3, num_fp16_res=2)
    notes = []
    stylegan2.convert_file(_snapshot(tmp_path, weights, kwargs, name="ok.pkl"), notes=notes)
    assert any("num_fp16_res=2" in n and "force_fp32=True" in n for n in notes), notes


@pytest.mark.parametrize("change, message", [
    ("resnet", r"'resnet' \(synthesis\.bR\.skip keys\) is not supported"),
    ("orig", r"'orig' \(toRGB only in the last block\) is not supported"),
    ("no_noise", r"no noise inputs \(use_noise=False\)"),
])
def test_a_state_dict_of_another_architecture_is_named(tmp_path, tiny_weights, change, message):
    weights = dict(tiny_weights[0])
    last = max(int(k.split(".")[1][1:]) for k in weights if k.startswith("synthesis.b"))
    if change == "resnet":
        weights["synthesis.b8.skip.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    elif change == "orig":
        weights = {k: v for k, v in weights.items() if ".torgb." not in k or k.startswith(f"synthesis.b{last}.")}
    else:
        weights = {k: v for k, v in weights.items() if "noise" not in k}
    with pytest.raises(stylegan2.ConversionError, match=message):
        _convert_dict(tmp_path, weights)


def test_a_stylegan3_pickle_is_named(parity_dir, tmp_path):
    weights, _, meta = _ada_files(parity_dir, "ada_tiny")
    path = _snapshot(tmp_path, weights, meta["init_kwargs"], module_src="class SynthesisInput(torch.nn.Module):\n")
    with pytest.raises(stylegan2.ConversionError, match="a StyleGAN3 generator"):
        stylegan2.convert_file(path)


def test_a_snapshot_gives_g_ema_or_its_g_and_names_what_it_lacks(parity_dir, tmp_path):
    weights, ref, meta = _ada_files(parity_dir, "ada_tiny")
    g = dict(weights, **{"mapping.fc0.bias": weights["mapping.fc0.bias"] + 1})  # the non-averaged G differs
    kw = meta["init_kwargs"]
    both = _snapshot(tmp_path, None, kw, G=g, D=None, G_ema=weights)
    G_ema = stylegan2.convert_file(both)
    assert _rel(np.asarray(G_ema.synthesis(ref["ws_plus"], noise="const")).transpose(0, 3, 1, 2), ref["img_const"]) < 1e-5
    notes = []
    G = stylegan2.convert_file(both, tf_network="G", notes=notes)
    np.testing.assert_array_equal(G.params["mapping"]["fc0"]["bias"], g["mapping.fc0.bias"])
    assert notes == ["converted the snapshot's non-averaged G (--network=G), not G_ema"]
    with pytest.raises(stylegan2.ConversionError, match=r"holding G, D but no G_ema; pass --network=G"):
        stylegan2.convert_file(_snapshot(tmp_path, None, kw, name="noema.pkl", G=g, D=weights))
    with pytest.raises(stylegan2.ConversionError, match=r"holding D but no G_ema: it holds no generator"):
        stylegan2.convert_file(_snapshot(tmp_path, None, kw, name="d.pkl", D=weights))
    with pytest.raises(stylegan2.ConversionError, match="holds one network's weights: drop the flag"):
        _convert_dict(tmp_path, weights, tf_network="G")


def test_a_flag_that_contradicts_the_file_is_refused(parity_dir, tmp_path):
    weights, _, meta = _ada_files(parity_dir, "ada_clamp")  # its pickle says conv_clamp 0.5
    path = _snapshot(tmp_path, weights, meta["init_kwargs"])
    assert stylegan2.convert_file(path, conv_clamp="0.5").config.conv_clamp == 0.5  # agreeing is fine
    with pytest.raises(stylegan2.ConversionError, match=r"--conv_clamp=None contradicts the file's own conv_clamp=0.5"):
        stylegan2.convert_file(path, conv_clamp="none")
    with pytest.raises(stylegan2.ConversionError, match=r"--mapping_lr_multiplier=0.1 contradicts"):
        stylegan2.convert_file(path, mapping_lr_multiplier=0.1)
    with pytest.raises(stylegan2.ConversionError, match=r"--conv_clamp=abc: give 'none' \(no clamp\) or a number"):
        stylegan2.convert_file(path, conv_clamp="abc")


def test_rosinality_training_checkpoint_without_latent_avg(parity_dir, tmp_path):
    """rosinality's train.py saves g, d, g_ema and args but no latent_avg: refused with the flag that
    estimates it; with the flag, w_avg is exactly the mean of the mapped z it names (seed 0)."""
    w = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(parity_dir, "rosi_64.weights.npz")).items()}
    ref = dict(np.load(os.path.join(parity_dir, "rosi_64.reference.npz")))
    path = str(tmp_path / "010000.pt")
    torch.save({"g": w, "d": {}, "g_ema": w, "args": __import__("argparse").Namespace(size=64)}, path)
    with pytest.raises(stylegan2.ConversionError, match=r"without 'latent_avg'.*--mean_latent_samples=4096"):
        stylegan2.convert_file(path)
    notes = []
    G = stylegan2.convert_file(path, mean_latent_samples=3000, notes=notes)
    assert "latent_avg estimated as the mean of 3000 mapped z" in notes[0]
    z = np.random.RandomState(0).randn(3000, G.z_dim).astype(np.float32)
    want = np.asarray(G.mapping(z, truncation_psi=1.0))[:, 0].mean(0)
    np.testing.assert_allclose(G.params["mapping"]["w_avg"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(G.mapping(ref["z"], truncation_psi=1.0)[:, 0], ref["w"][:, 0] if ref["w"].ndim == 3
                               else ref["w"], rtol=1e-5, atol=1e-5)  # the mapping that averaged them is rosinality's
    assert _rel(np.asarray(G.synthesis(ref["ws_plus"], noise="const")).transpose(0, 3, 1, 2), ref["img_const"]) < 1e-5


def test_converter_cli_refuses_bad_paths_in_one_line_before_converting(parity_dir, tmp_path):
    root = os.path.dirname(os.path.dirname(__file__))

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "converters.stylegan2", *args], capture_output=True, text=True,
                           cwd=root)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-1500:]
        return lines[0]

    good = f"{parity_dir}/ada_tiny.weights.npz"
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "corrupt.pkl").write_bytes(b"\x80\x04garbage")
    assert "is a folder: give the network's file" in run(f"--src={tmp_path}/folder", f"--dst={tmp_path}/o1")
    assert "is empty (0 bytes)" in run(f"--src={tmp_path}/empty.pkl", f"--dst={tmp_path}/o2")
    assert "--conv_clamp=abc: give 'none'" in run(f"--src={good}", f"--dst={tmp_path}/o3", "--conv_clamp=abc")
    assert "a file is in the way" in run(f"--src={good}", f"--dst={tmp_path}/a_file/sub", "--conv_clamp=none")
    # an existing --dst that holds files is refused before the source is read (a corrupt source would fail later)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("precious")
    assert "already exists and holds files" in run(f"--src={tmp_path}/corrupt.pkl", f"--dst={tmp_path}/full")
    assert "a file, not a folder" in run(f"--src={tmp_path}/corrupt.pkl", f"--dst={tmp_path}/a_file")
    assert (tmp_path / "a_file").read_text() == "precious" and not list(tmp_path.glob("o[123]*"))
    assert os.listdir(tmp_path / "full") == ["mine.txt"]


def test_a_partial_rosinality_or_ada_state_dict_names_the_missing_key(tmp_path, tiny_weights):
    path = tmp_path / "rosi_bad.pt"  # was a KeyError traceback
    torch.save({"g_ema": {"style.1.weight": torch.zeros(3, 3)}, "latent_avg": torch.zeros(3)}, path)
    with pytest.raises(stylegan2.ConversionError, match=r"missing key conv1\.conv\.weight: not a whole rosinality"):
        stylegan2.convert_file(str(path))
    partial = {k: v for k, v in tiny_weights[0].items() if "noise" not in k and (not k.startswith("synthesis.b16.")
               or k.endswith("torgb.weight"))}  # a cut file, not use_noise=False (which it was blamed on)
    with pytest.raises(stylegan2.ConversionError, match=r"missing key synthesis\.b16\."):
        _convert_dict(tmp_path, partial)


# --- a file of another kind, a damaged one: one line naming the file (audit: findings 3, 5, 12) -------

_READS = "the converter reads a stylegan2-ada-pytorch network pickle"


def _pickle_of_a_class_from_an_unknown_module(path):
    """Pickles an object of sklearn.linear_model.LinearRegression as sklearn would (a stand-in module,
    gone once written): a module the reader has never heard of."""
    saved = {k: sys.modules.get(k) for k in ("sklearn", "sklearn.linear_model")}
    module = types.ModuleType("sklearn.linear_model")

    class LinearRegression:
        def __init__(self):
            self.coef_ = [0.0, 1.0]

    LinearRegression.__module__, LinearRegression.__qualname__ = "sklearn.linear_model", "LinearRegression"
    module.LinearRegression = LinearRegression
    sys.modules.update({"sklearn": types.ModuleType("sklearn"), "sklearn.linear_model": module})
    try:
        path.write_bytes(pickle.dumps(LinearRegression()))
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


@pytest.mark.parametrize("what, words", [
    ("numpy_dict", "multiarray._reconstruct"),
    ("numpy_array", "multiarray._reconstruct"),
    ("list", "holds a list, not a network"),
    ("plain_dict", "is not a state dict of tensors"),
    ("unknown_class", "sklearn.linear_model.LinearRegression"),
    ("tensor", "holds a ndarray, not a network"),
    ("other_state_dict", "unknown checkpoint format (keys like encoder.weight)"),
])  # fmt: skip
def test_a_pickle_of_something_else_names_the_formats_the_converter_reads(tmp_path, what, words):
    """Was: 'refusing to load global numpy...: not one of the 24 data-only globals', or 'holds a list',
    without the file of a pickle of numpy arrays or saying which files the converter reads."""
    path = tmp_path / f"{what}.pkl"
    if what == "unknown_class":
        _pickle_of_a_class_from_an_unknown_module(path)
    elif what in ("tensor", "other_state_dict"):
        torch.save(torch.zeros(3) if what == "tensor" else {"encoder.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(pickle.dumps({"numpy_dict": {"a": np.zeros(3)}, "numpy_array": np.zeros(3), "list": [1, 2],
                                       "plain_dict": {"x": 1}}[what]))
    with pytest.raises((stylegan2.UnknownFormatError, torch_pickle.UnsafePickleError)) as e:
        stylegan2.convert_file(str(path))
    message = str(e.value)
    assert message.startswith(str(path)) and words in message and _READS in message and "TensorFlow" in message


def test_the_converter_command_names_a_foreign_or_damaged_file_in_one_line(parity_dir, tmp_path):
    from test_cli import assert_one_line_error, run_cli

    _pickle_of_a_class_from_an_unknown_module(tmp_path / "model.pkl")
    p, _ = run_cli("converters.stylegan2", f"--src={tmp_path}/model.pkl", f"--dst={tmp_path}/out")
    assert_one_line_error(p, "model.pkl: not a generator file the converter reads", "sklearn.linear_model", _READS)
    w = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(parity_dir, "rosi_64.weights.npz")).items()}
    legacy = tmp_path / "rosi.pt"
    torch.save({"g_ema": w, "latent_avg": torch.zeros(1, 64)}, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    p, _ = run_cli("converters.stylegan2", f"--src={tmp_path}/cut.pt", f"--dst={tmp_path}/out")
    assert_one_line_error(p, f"{tmp_path}/cut.pt: file ends inside storage", "fetch the file again")  # was: no file
    assert not (tmp_path / "out").exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".out")]


def test_nan_or_infinite_weights_are_named(parity_dir, tmp_path, tiny_weights):
    """Was: converted, and the self-check printed nan."""
    weights = dict(tiny_weights[0])
    weights["synthesis.b8.conv1.weight"] = np.where(np.arange(weights["synthesis.b8.conv1.weight"].size).reshape(
        weights["synthesis.b8.conv1.weight"].shape) == 5, np.inf, weights["synthesis.b8.conv1.weight"]).astype(np.float32)
    with pytest.raises(stylegan2.ConversionError, match=r"sd\.npz: synthesis\.b8\.conv1\.weight holds 1 NaN or inf"):
        _convert_dict(tmp_path, weights)
    w = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(parity_dir, "rosi_64.weights.npz")).items()}
    torch.save({"g_ema": w, "latent_avg": torch.full((1, 64), float("nan"))}, tmp_path / "rosi.pt")
    with pytest.raises(stylegan2.ConversionError, match=r"rosi\.pt: latent_avg holds 64 NaN or infinite value\(s\)"):
        stylegan2.convert_file(str(tmp_path / "rosi.pt"))


def test_network_g_on_a_file_with_one_generator_is_refused(parity_dir, tmp_path):
    """Was: an ada pickle of a lone Generator converted it with --network=G without a word."""
    weights, _, meta = _ada_files(parity_dir, "ada_tiny")
    path = tmp_path / "G_ema.pkl"
    with _FakeModules() as fake:
        path.write_bytes(pickle.dumps(_module_tree(fake, weights, meta["init_kwargs"], "")))
    stylegan2.convert_file(str(path))
    with pytest.raises(stylegan2.ConversionError, match="holds a single Generator: drop the flag"):
        stylegan2.convert_file(str(path), tf_network="G")


def test_a_damaged_persistent_object_is_named(tmp_path):
    with _FakeModules() as fake:
        data = pickle.dumps({"G_ema": _Persistent(fake.reconstruct, "Generator", None, "")})
    (tmp_path / "damaged.pkl").write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="without its class_name and state: the file is damaged"):
        stylegan2.convert_file(str(tmp_path / "damaged.pkl"))
