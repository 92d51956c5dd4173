"""Official TensorFlow StyleGAN2 pickles (../shared/parity/tf): read without TensorFlow, dnnlib or
PyTorch, nothing in them run, converted number for number; what the port does not implement refused."""

import os
import pickle
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import i2spp_jax
from i2spp_jax.formats import stylegan2, tf_pickle
from i2spp_jax.formats.torch_pickle import UnsafePickleError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5  # relative error (norm of the difference over the norm of the reference); measured <= 6.7e-7


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _nchw(img):
    return np.asarray(img).transpose(0, 3, 1, 2)


def test_stylegan2_gs_equals_the_official_network(tf_dir):
    ref = np.load(os.path.join(tf_dir, "sg2_r32.reference.npz"))
    G = stylegan2.convert_file(os.path.join(tf_dir, "sg2_r32.pkl"))
    assert (G.img_resolution, G.num_ws, G.w_dim, len(G.noise_names)) == (32, 8, 64, 7)
    assert _rel(G.mapping(ref["z"]), ref["w"]) < RTOL
    cases = {"img_psi1": G.mapping(ref["z"]), "img_psi07": G.mapping(ref["z"], 0.7),
             "img_psi07_cut2": G.mapping(ref["z"], 0.7, 2), "img_synth_w": jnp.asarray(ref["w"]),
             "img_synth_wplus": jnp.asarray(ref["w_plus"])}  # every W+ layer differs: which style drives which layer
    for key, ws in cases.items():
        assert _rel(_nchw(G.synthesis(ws, noise="const")), ref[key]) < RTOL, key
    unfused = G.synthesis(G.mapping(ref["z"]), noise="const", fused_modconv=False)
    assert _rel(_nchw(unfused), ref["img_psi1_unfused"]) < RTOL
    # the truncation settings are not the same image: the test can tell them apart
    assert _rel(ref["img_psi07"], ref["img_psi1"]) > 0.05 and _rel(ref["img_psi07_cut2"], ref["img_psi07"]) > 0.01


def test_stylegan2_g_is_the_non_averaged_network(tf_dir):
    ref = np.load(os.path.join(tf_dir, "sg2_r32.reference.npz"))
    G = stylegan2.convert_file(os.path.join(tf_dir, "sg2_r32.pkl"), tf_network="G")
    assert _rel(_nchw(G.synthesis(G.mapping(ref["z"]), noise="const")), ref["img_G_psi1"]) < RTOL
    assert _rel(ref["img_G_psi1"], ref["img_psi1"]) > 0.01  # G and Gs differ in the fixture
    with pytest.raises(stylegan2.ConversionError, match="D_stylegan2 with synthesis none"):
        stylegan2.convert_file(os.path.join(tf_dir, "sg2_r32.pkl"), tf_network="D")


def test_load_generator_and_the_converter_command(tf_dir, tmp_path):
    src = os.path.join(tf_dir, "sg2_r32.pkl")
    G = i2spp_jax.load_generator(src)  # --generator=X.pkl reads it on the fly
    assert G.config.channels == (32, 32, 32, 32)
    dst = tmp_path / "ckpt"
    p = subprocess.run([sys.executable, "-m", "converters.stylegan2", f"--src={src}", f"--dst={dst}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "official TensorFlow pickle (G, D, Gs): converting Gs" in p.stdout
    assert float(p.stdout.split("self-check reference_rel_error: ")[1].split()[0]) < RTOL


# --- what the port does not implement, and what a file must not do ---------------------------------


def _fake_dnnlib(mp: pytest.MonkeyPatch):
    """A stand-in `dnnlib.tflib.network.Network` in sys.modules (undone when `mp` ends), so that pickle
    records the global an official pickle does. Only the writer sees it; the reader must not need it."""

    class Network:
        def __getstate__(self):
            return self.state

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
        mp.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["dnnlib.tflib.network"].Network = Network
    return Network


def _rewrite(tf_dir, tmp_path, edit, name="edited.pkl", source="sg2_r32", pack=lambda G, D, Gs: (G, D, Gs)):
    """The fixture read with the project's reader, `edit(state of Gs)` applied, pickled again as the
    official code does (`pack` says what the file holds: the official (G, D, Gs) by default)."""
    G, D, Gs = tf_pickle.load_file(os.path.join(tf_dir, f"{source}.pkl"))
    with pytest.MonkeyPatch.context() as mp:
        Network = _fake_dnnlib(mp)

        def convert(net):
            out = Network()
            out.state = dict(net.state, components={k: convert(c) for k, c in net.components.items()})
            return out

        G2, D2, Gs2 = convert(G), convert(D), convert(Gs)
        edit(Gs2.state)
        path = tmp_path / name
        path.write_bytes(pickle.dumps(pack(G2, D2, Gs2), protocol=3))
    return str(path)


def test_a_rewritten_pickle_reads_back_identically(tf_dir, tmp_path):
    """The writer above makes what the reader reads: the check that the edits below test the reader."""
    path = _rewrite(tf_dir, tmp_path, lambda s: None)
    a = stylegan2.convert_file(path)
    b = stylegan2.convert_file(os.path.join(tf_dir, "sg2_r32.pkl"))
    for x, y in zip(np.asarray(a.synthesis(a.mapping(np.ones((1, 64))))), np.asarray(b.synthesis(b.mapping(
            np.ones((1, 64)))))):
        np.testing.assert_array_equal(x, y)


def test_embedded_source_stays_text(tf_dir, tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('ran')\ndef G_main(*a, **k): pass\n"
    path = _rewrite(tf_dir, tmp_path, lambda s: s.update(build_module_src=code))
    stylegan2.convert_file(path)
    assert not marker.exists()
    assert tf_pickle.load_file(path)[2].state["build_module_src"] == code


def test_a_global_inside_a_network_is_refused_unrun(tf_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = _rewrite(tf_dir, tmp_path, lambda s: s.update(build_module_src=Evil()))
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        stylegan2.convert_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins.eval", "subprocess.Popen", "dnnlib.tflib.network.import_module",
                                         "numpy.load"])
def test_any_other_global_is_refused_by_name(tmp_path, global_name):
    module, name = global_name.rsplit(".", 1)
    # protocol 2: the TF sniff sees dnnlib.tflib.network, then a global the reader must refuse
    data = b"\x80\x02" + f"cdnnlib.tflib.network\nNetwork\n0c{module}\n{name}\n(S'x'\ntR.".encode()
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    assert tf_pickle.is_tf_pickle(str(path))
    with pytest.raises(UnsafePickleError, match=global_name.replace(".", r"\.")):
        tf_pickle.load_file(str(path))


@pytest.mark.parametrize("edit, words", [
    (lambda s: s["static_kwargs"].update(label_size=10), "conditional generators (label_size=10)"),
    (lambda s: s["components"]["synthesis"].state["static_kwargs"].update(architecture="resnet"),
     "architecture='resnet': the port implements only 'skip'"),
    (lambda s: s["static_kwargs"].update(some_new_option=3), "unknown network setting(s) ['some_new_option']"),
    (lambda s: s.update(version=3), "network version 3"),
    (lambda s: s["components"]["synthesis"].state["variables"].append(("8x8/Extra/weight", np.ones(2))),
     "unknown variable synthesis/8x8/Extra/weight"),
])
def test_what_the_port_does_not_implement_is_refused_by_name(tf_dir, tmp_path, edit, words):
    path = _rewrite(tf_dir, tmp_path, edit)
    with pytest.raises(stylegan2.ConversionError) as e:
        stylegan2.convert_file(path)
    assert words in str(e.value)


def test_the_stylegan2_reader_sends_stylegan_v1_to_load_generator(tf_dir):
    with pytest.raises(stylegan2.ConversionError, match=r"StyleGAN \(v1\) generator \(G_style\).*load_generator"):
        stylegan2.convert_file(os.path.join(tf_dir, "sg1_r32.pkl"))


def test_truncated_pickle_is_named(tf_dir, tmp_path):
    data = open(os.path.join(tf_dir, "sg2_r32.pkl"), "rb").read()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pickle.UnpicklingError, match="truncated or corrupt"):
        stylegan2.convert_file(str(path))


@pytest.mark.parametrize("edit, words", [
    (lambda s: s["static_kwargs"].update(label_size=10), "label_size=10: the port implements 0"),
    (lambda s: s["components"]["synthesis"].state["static_kwargs"].update(use_pixel_norm=True),
     "use_pixel_norm=True: the port implements False"),
    (lambda s: s["components"]["synthesis"].state["variables"].append(("lod", np.float32(1.0))), "lod=1.0"),
    (lambda s: s["components"]["synthesis"].state["variables"].append(("8x8/Extra/weight", np.ones(2))),
     "unused variable(s) ['synthesis/8x8/Extra/weight']"),
])
def test_a_stylegan_v1_the_port_does_not_implement_is_refused_by_name(tf_dir, tmp_path, edit, words):
    import i2spp_jax

    path = _rewrite(tf_dir, tmp_path, edit, source="sg1_r32")
    with pytest.raises(stylegan2.ConversionError) as e:
        i2spp_jax.load_generator(path)
    assert words in str(e.value)


def test_a_global_inside_a_stylegan_v1_network_is_refused_unrun(tf_dir, tmp_path):
    import i2spp_jax

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = _rewrite(tf_dir, tmp_path, lambda s: s.update(build_module_src=Evil()), source="sg1_r32")
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        i2spp_jax.load_generator(path)
    assert not marker.exists()


@pytest.mark.parametrize("flag, value", [("conv_clamp", "none"), ("mapping_lr_multiplier", 0.1),
                                         ("mean_latent_samples", 4096)])
def test_a_pytorch_only_flag_on_a_tensorflow_pickle_is_refused(tf_dir, flag, value):
    """A TensorFlow pickle says its own settings; a flag for PyTorch files is refused, not ignored."""
    from i2spp_jax.formats import generators

    for name in ("sg2_r32.pkl", "sg1_r32.pkl"):
        with pytest.raises(stylegan2.ConversionError, match=f"official TensorFlow pickle.*drop --{flag}"):
            generators.convert_file(os.path.join(tf_dir, name), **{flag: value})


# --- a damaged file, a lone network, a failed self-check: one line, and nothing at --dst -------------


def _variable(component, name, change):
    """An edit of Gs's state: `change(array)` for the variable `name` of `component` (None: Gs's own);
    a change that returns None removes the variable."""

    def edit(state):
        s = state if component is None else state["components"][component].state
        changed = [(n, change(v) if n == name else v) for n, v in s["variables"]]
        s["variables"] = [(n, v) for n, v in changed if v is not None]

    return edit


def _nan_at_3(v):
    v = np.array(v)
    v.reshape(-1)[3] = np.nan
    return v


def _convert_any(path, **kw):
    from i2spp_jax.formats import generators

    return generators.convert_file(path, **kw)


@pytest.mark.parametrize("source", ["sg1_r32", "sg2_r32"])
@pytest.mark.parametrize("component, name, change, words", [
    ("synthesis", "8x8/Conv1/weight", lambda v: v[:, :, :16],
     "variable synthesis/8x8/Conv1/weight has shape (3, 3, 16, 32), expected (3, 3, 32, 32)"),
    ("mapping", "Dense1/weight", lambda v: v[:32], "variable mapping/Dense1/weight has shape (32, 64), expected (64, 64)"),
    (None, "dlatent_avg", lambda v: v[:3], "variable dlatent_avg has shape (3,), expected (64,)"),
    ("synthesis", "8x8/Conv1/bias", _nan_at_3, "variable synthesis/8x8/Conv1/bias holds 1 NaN or infinite value(s) of 32"),
    ("mapping", "Dense1/weight", lambda v: np.full_like(v, np.inf), "mapping/Dense1/weight holds 4096 NaN or infinite"),
    ("synthesis", "8x8/Conv1/bias", lambda v: None, "missing variable synthesis/8x8/Conv1/bias (of shape (32,))"),
])  # fmt: skip
def test_a_variable_of_another_shape_not_finite_or_missing_is_named(tf_dir, tmp_path, source, component, name, change,
                                                                    words):
    """Was: StyleGAN (v1) converted any shape (a traceback when rendering) and both accepted NaN/inf."""
    path = _rewrite(tf_dir, tmp_path, _variable(component, name, change), source=source)
    with pytest.raises(stylegan2.ConversionError) as e:
        _convert_any(path)
    assert str(e.value).startswith(path) and words in str(e.value), str(e.value)


def _drop(key):
    return lambda s: s.pop(key)


@pytest.mark.parametrize("source", ["sg1_r32", "sg2_r32"])
@pytest.mark.parametrize("edit, error, words", [
    (_drop("build_func_name"), tf_pickle.DamagedNetworkError, "network 'Gs' has no 'build_func_name' in its state"),
    (lambda s: s["components"]["synthesis"].state.pop("variables"), tf_pickle.DamagedNetworkError,
     "network 'G_synthesis' has no 'variables'"),
    (lambda s: s["components"].update(synthesis={"a": 1}), tf_pickle.DamagedNetworkError,
     "its component 'synthesis' is a dict, not a Network"),
    (lambda s: s.update(components=[1]), tf_pickle.DamagedNetworkError, "its components is a list, not a dict"),
    (lambda s: s["variables"].append(("x",)), tf_pickle.DamagedNetworkError, "is not a (name, array) pair"),
    (lambda s: s.update(variables=[(n, "text") for n, _ in s["variables"]]), tf_pickle.DamagedNetworkError,
     "holds <U4 values, not numbers"),
    (lambda s: s.update(version="x"), tf_pickle.DamagedNetworkError, "its version is 'x'"),
    (lambda s: s["static_kwargs"].update(resolution="abc"), stylegan2.ConversionError,
     "network setting resolution='abc': not a whole number"),
    (lambda s: s["static_kwargs"].update(latent_size=32), stylegan2.ConversionError,
     "variable mapping/Dense0/weight has shape (64, 64), expected (32, 64)"),
])  # fmt: skip
def test_a_damaged_network_state_is_named_with_the_file(tf_dir, tmp_path, source, edit, error, words):
    """Was: KeyError, AttributeError, TypeError or ValueError tracebacks (or a silent conversion)."""
    path = _rewrite(tf_dir, tmp_path, edit, source=source)
    with pytest.raises(error) as e:
        _convert_any(path)
    assert str(e.value).startswith(path) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("source", ["sg1_r32", "sg2_r32"])
def test_a_file_with_one_network_converts_it_or_names_the_flag(tf_dir, tmp_path, source):
    """Was: --network=G on a file holding only Gs converted that Gs without a word."""
    ref = np.load(os.path.join(tf_dir, f"{source}.reference.npz"))
    lone = _rewrite(tf_dir, tmp_path, lambda s: None, name="lone.pkl", source=source, pack=lambda G, D, Gs: Gs)
    notes = []
    G = _convert_any(lone, notes=notes)
    assert _rel(_nchw(G.synthesis(ref["w_plus"], noise="const")), ref["img_synth_wplus"]) < RTOL
    assert notes == [f"{lone} holds a single network, Gs ({'G_style' if source == 'sg1_r32' else 'G_main'}), not "
                     "(G, D, Gs): converting it"]
    with pytest.raises(stylegan2.ConversionError, match="it has no G; drop --network=G to convert it"):
        _convert_any(lone, tf_network="G")
    lone_g = _rewrite(tf_dir, tmp_path, lambda s: s.update(name="G"), name="lone_g.pkl", source=source,
                      pack=lambda G, D, Gs: Gs)
    with pytest.raises(stylegan2.ConversionError, match="it has no Gs; pass --network=G to convert it"):
        _convert_any(lone_g)
    as_dict = _rewrite(tf_dir, tmp_path, lambda s: None, name="dict.pkl", source=source,
                       pack=lambda G, D, Gs: {"G": G, "Gs": Gs})
    with pytest.raises(stylegan2.UnknownFormatError, match=r"holding a dict of 2 items, not the official \(G, D, Gs\) "
                                                           "or one Network; the converter reads"):
        _convert_any(as_dict)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "converters.stylegan2", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _one_line(p, *words):
    from test_cli import assert_one_line_error

    assert_one_line_error(p, *words)


def test_the_converter_command_refuses_damaged_pickles_in_one_line_and_writes_nothing(tf_dir, tmp_path):
    """Was: a v1 variable of another shape wrote --dst, then failed in the self-check with a traceback;
    NaN weights wrote a checkpoint whose self-check printed nan; --network=G on a lone Gs converted it."""
    src = tmp_path / "src"
    src.mkdir()
    shape = _rewrite(tf_dir, src, _variable("synthesis", "8x8/Conv1/weight", lambda v: v[:, :, :16]), "shape.pkl",
                     source="sg1_r32")
    nan = _rewrite(tf_dir, src, _variable("synthesis", "8x8/Conv1/bias", _nan_at_3), "nan.pkl")
    lone = _rewrite(tf_dir, src, lambda s: None, "lone.pkl", source="sg1_r32", pack=lambda G, D, Gs: Gs)
    removed = _rewrite(tf_dir, src, lambda s: s["components"]["synthesis"].state.pop("components"), "removed.pkl",
                       source="sg1_r32")
    data = open(os.path.join(tf_dir, "sg1_r32.pkl"), "rb").read()
    (src / "cut.pkl").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _one_line(_cli(f"--src={shape}", f"--dst={out}/a"), shape, "8x8/Conv1/weight has shape (3, 3, 16, 32), expected")
    _one_line(_cli(f"--src={nan}", f"--dst={out}/b"), "synthesis/8x8/Conv1/bias holds 1 NaN or infinite")
    _one_line(_cli(f"--src={lone}", f"--dst={out}/c", "--network=G"), "holds a single network, Gs", "drop --network=G")
    _one_line(_cli(f"--src={removed}", f"--dst={out}/d"), removed, "'G_synthesis' has no 'components'")
    _one_line(_cli(f"--src={src}/cut.pkl", f"--dst={out}/e"), f"{src}/cut.pkl", "truncated or corrupt")
    assert not out.exists()  # not even the parent folder --dst would have been made in


def test_a_failed_self_check_exits_non_zero_and_leaves_no_checkpoint(tf_dir, tmp_path):
    """Was: the self-check printed reference_rel_error 1.49, exited 0 and left the checkpoint at --dst."""
    src, other = os.path.join(tf_dir, "sg2_r32.pkl"), os.path.join(tf_dir, "sg1_r32.reference.npz")
    dst = tmp_path / "new" / "ckpt"
    p = _cli(f"--src={src}", f"--dst={dst}", f"--reference={other}")
    _one_line(p, "self-check failed", "img_synth_wplus", "by 1.49 relative", "nothing was written to --dst")
    assert "self-check reference_rel_error: 1.49" in p.stdout
    assert os.listdir(tmp_path) == []  # no checkpoint, no hidden staging folder, no parent made for it
    # a reference that cannot be used is refused before converting; one for another topology once converted
    _one_line(_cli(f"--src={src}", f"--dst={dst}", f"--reference={tmp_path}/none.npz"), "no such file")
    _one_line(_cli(f"--src={src}", f"--dst={dst}", f"--reference={src}"), "not a readable .npz")
    torch_fixture = os.path.join(os.path.dirname(tf_dir), "ada_tiny.reference.npz")  # ws_plus -> img_const: a G_ema's
    _one_line(_cli(f"--src={src}", f"--dst={dst}", "--network=G", f"--reference={torch_fixture}"), "z + img_G_psi1")
    _one_line(_cli(f"--src={src}", f"--dst={dst}", f"--reference={tf_dir}/sg1_r128.reference.npz"),
              "do not fit this generator", "belongs to another network")
    assert os.listdir(tmp_path) == []
    # the same with the right reference and an empty folder as --dst: written there
    (tmp_path / "empty").mkdir()
    p = _cli(f"--src={src}", f"--dst={tmp_path}/empty", "--network=G")
    assert p.returncode == 0, p.stderr[-2000:]
    assert float(p.stdout.split("self-check reference_rel_error: ")[1].split()[0]) < RTOL
    assert sorted(os.listdir(tmp_path / "empty")) == ["config.json", "params"] and os.listdir(tmp_path) == ["empty"]
