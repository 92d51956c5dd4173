r"""Reads official StyleGAN2 generators into i2spp_jax's `Generator` (the command line that writes
checkpoints from them is converters/stylegan2.py).

Sources (format detected from the content, not the name):
  * stylegan2-ada-pytorch network pickles (.pkl; G_ema), read by a restricted unpickler that runs
    nothing from the file (i2spp_jax.formats.torch_pickle);
  * state dicts with ada key names (.pt/.pth/.npz), with settings the shapes cannot tell
    (conv_clamp, mapping lr multiplier) from NAME.json beside the file or from flags;
  * rosinality/stylegan2-pytorch checkpoints (.pt with 'g_ema' and 'latent_avg');
  * official TensorFlow StyleGAN2 pickles (.pkl, `(G, D, Gs)` of dnnlib Networks; Gs unless asked
    for G), read without TensorFlow by i2spp_jax.formats.tf_pickle and renamed to ada's keys.
Every target parameter must be matched by exactly one source key: a missing key, an unused key or
a shape mismatch is an error that names the key, and so is a NaN or infinite weight; every message
names the file. A TensorFlow pickle's variables are checked, in its own names and layouts, against
the shapes its settings give (`tf_expected_shapes`). After converting, the CLI reloads the checkpoint,
renders fixed latents and compares (with the official network's outputs where it has them), and
writes --dst only if they agree.
"""

import contextlib
import json
import os
import pickle
import re
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from i2spp_jax.formats import tf_pickle, torch_pickle
from i2spp_jax.formats.errors import FORMATS, ConversionError, UnknownFormatError
from i2spp_jax import ops
from i2spp_jax.generator import Generator, GeneratorConfig, init_params

StateDict = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Reading sources

def _module_state_dict(obj: torch_pickle.PersistentObject, prefix: str = "") -> StateDict:
    """torch.nn.Module.state_dict() of an unpickled persistent module, without the module."""
    state = obj.state
    out: StateDict = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = np.asarray(value)
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, torch_pickle.PersistentObject):
            raise ConversionError(f"submodule {prefix + name} is not a stylegan2-ada persistent class")
        out.update(_module_state_dict(child, prefix + name + "."))
    return out


def _flat_arrays(d: Any, what: str) -> StateDict:
    if not isinstance(d, dict) or not all(isinstance(v, np.ndarray) for v in d.values()):
        raise UnknownFormatError(f"{what} is not a state dict of tensors; {FORMATS}")
    return {str(k): np.asarray(v) for k, v in d.items()}


def _is_ada(keys) -> bool:
    return any(k.startswith("synthesis.b4.") for k in keys) and any(k.startswith("mapping.") for k in keys)


def _is_rosinality(keys) -> bool:
    return "input.input" in keys and any(k.startswith("style.") for k in keys)


def _beside(path: str, suffix: str) -> Optional[str]:
    """NAME{suffix} beside the file: for X.pt that is X{suffix}; for X.weights.npz (shared/parity)
    X{suffix} too. None if neither exists."""
    stem = os.path.splitext(path)[0]
    for candidate in (stem + suffix, re.sub(r"\.weights$", "", stem) + suffix):
        if os.path.exists(candidate):
            return candidate
    return None


def sidecar_json(path: str) -> Optional[str]:
    """NAME.json beside the file (init_kwargs for ada state dicts), or None."""
    return _beside(path, ".json")


def read_source(path: str, *, tf_network: str = "Gs") -> tuple[str, StateDict, dict]:
    """Returns (format, state dict of numpy arrays, extras) for any supported source file.

    extras may hold 'init_kwargs' (ada, TensorFlow), 'latent_avg' (rosinality), 'json' (NAME.json
    beside it), 'network' (which of a TensorFlow pickle's G, D, Gs was read: `tf_network`).
    """
    extras: dict = {}
    side = sidecar_json(path)
    if side:
        with open(side) as f:
            extras["json"] = json.load(f)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                sd = {k: z[k] for k in z.files}
        except Exception as e:  # zipfile/ValueError/EOF: all mean the same to a user
            raise torch_pickle.TruncatedFileError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from None
    elif tf_pickle.is_tf_pickle(path):
        net, extras["picked"] = tf_pickle.pick_network(tf_pickle.load_file(path), path, tf_network)
        sd, extras["init_kwargs"] = tf_stylegan2_state_dict(net, path)
        extras["network"] = tf_network
        return "tf-stylegan2", sd, extras
    else:
        try:
            obj = torch_pickle.load_file(path)
        except torch_pickle.UnsafePickleError as e:  # a pickle of something else (nothing of it was run)
            raise torch_pickle.UnsafePickleError(f"{path}: not a generator file the converter reads: {e}; "
                                                 f"{FORMATS}") from None
        except (torch_pickle.TruncatedFileError, pickle.UnpicklingError) as e:
            if str(e).startswith(path):
                raise
            raise type(e)(f"{path}: {e}; fetch the file again") from None
        nets = [k for k in ("G", "D", "G_ema") if isinstance(obj, dict)
                and isinstance(obj.get(k), torch_pickle.PersistentObject)]
        if nets:  # a stylegan2-ada-pytorch snapshot: G_ema (the moving average) unless asked for G
            key = "G" if tf_network == "G" else "G_ema"
            if key not in nets:
                hint = ("; pass --network=G to convert its non-averaged G" if "G" in nets else
                        ": it holds no generator to convert")
                raise ConversionError(f"{path}: a stylegan2-ada-pytorch snapshot holding {', '.join(nets)} but no "
                                      f"{key}{hint}")
            obj = obj[key]
            extras["network"] = "G" if key == "G" else "Gs"
        if isinstance(obj, torch_pickle.PersistentObject):
            if obj.class_name != "Generator":
                raise UnknownFormatError(f"{path}: the pickled network is a {obj.class_name}, not a Generator")
            if "class SynthesisInput" in str(obj.get("module_src", "")):
                raise ConversionError(f"{path}: a StyleGAN3 generator (stylegan3's networks_stylegan3): not "
                                      "supported; the port implements StyleGAN2 and StyleGAN (v1)")
            if tf_network == "G" and "network" not in extras:
                raise ConversionError(f"{path}: --network=G picks the non-averaged G of a snapshot that holds G and "
                                      "G_ema; this file holds a single Generator: drop the flag to convert it")
            extras["init_kwargs"] = dict(obj.state.get("_init_kwargs") or {})
            return "ada-pkl", _module_state_dict(obj), extras
        if isinstance(obj, dict) and "g_ema" in obj:  # rosinality: g_ema unless asked for g (its train.py's)
            key = "g" if tf_network == "G" else "g_ema"
            if key not in obj:
                raise ConversionError(f"{path}: --network=G needs a rosinality checkpoint with 'g' (as its "
                                      "train.py saves them); this one holds g_ema alone: drop the flag")
            sd = _flat_arrays(obj[key], f"{path}['{key}']")
            extras["network"] = "G" if key == "g" else "Gs"
            if "latent_avg" in obj:
                extras["latent_avg"] = np.asarray(obj["latent_avg"])
            return "rosinality", sd, extras
        if isinstance(obj, dict) and isinstance(obj.get("G_ema"), dict):
            obj = obj["G_ema"]
        if not isinstance(obj, dict):
            raise UnknownFormatError(f"{path}: holds a {type(obj).__name__}, not a network, checkpoint or state dict; "
                                     f"{FORMATS}")
        sd = _flat_arrays(obj, path)
    if tf_network == "G":
        raise ConversionError(f"{path}: --network=G picks the non-averaged G of a snapshot that holds both; this "
                              "file holds one network's weights: drop the flag")
    if _is_ada(sd):
        return "ada-state-dict", sd, extras
    if _is_rosinality(sd):
        if "latent_avg" in sd:
            extras["latent_avg"] = sd.pop("latent_avg")
        return "rosinality", sd, extras
    sample = ", ".join(sorted(sd)[:5])
    raise UnknownFormatError(f"{path}: unknown checkpoint format (keys like {sample}); {FORMATS}")


# ---------------------------------------------------------------------------------------------
# Official TensorFlow pickles -> ada's key names (the official ada code's own legacy mapping)

# static_kwargs of G_main / G_mapping / G_synthesis_stylegan2 that change nothing this port computes
_TF_HARMLESS = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
                "style_mixing_prob", "structure", "randomize_noise", "fused_modconv", "dtype", "is_template_graph",
                "components", "dlatent_avg_beta", "w_avg_beta", "return_dlatents", "is_training", "is_validation",
                "num_fp16_res", "latent_size", "dlatent_size", "resolution", "num_channels", "label_size",
                "mapping_layers", "mapping_fmaps", "mapping_lrmul", "fmap_base", "fmap_max", "conv_clamp",
                "dlatent_broadcast", "normalize_latents", "use_noise"}
# settings the port implements only at their official defaults: {name: default}
_TF_FIXED = {"architecture": "skip", "resample_kernel": [1, 3, 3, 1], "nonlinearity": "lrelu",
             "mapping_nonlinearity": "lrelu", "fmap_decay": 1.0, "fmap_min": 1, "label_fmaps": None,
             "normalize_latents": True, "use_noise": True}


def tf_expected_shapes(kw: dict, where: str = "") -> dict[str, tuple]:
    """{variable name: shape} of every variable a G_main of these settings (`kw`: its static_kwargs and
    its components', the official defaults where one is absent) reads, in TF layouts."""
    res = tf_pickle.resolution_setting(kw, where)
    z_dim, w = (tf_pickle.int_setting(kw, k, 512, where) for k in ("latent_size", "dlatent_size"))
    layers, fmaps = (tf_pickle.int_setting(kw, k, 512 if k == "mapping_fmaps" else 8, where)
                     for k in ("mapping_layers", "mapping_fmaps"))
    fmap_base = tf_pickle.int_setting(kw, "fmap_base", 16 << 10, where)
    fmap_max = tf_pickle.int_setting(kw, "fmap_max", 512, where)
    img_channels = tf_pickle.int_setting(kw, "num_channels", 3, where)
    shapes: dict[str, tuple] = {"dlatent_avg": (w,)}
    for i in range(layers):
        fan_in, fan_out = z_dim if i == 0 else fmaps, w if i == layers - 1 else fmaps
        shapes.update({f"mapping/Dense{i}/weight": (fan_in, fan_out), f"mapping/Dense{i}/bias": (fan_out,)})

    def nf(r: int) -> int:  # the official nf(log2(r) - 1), fmap_decay 1 and fmap_min 1
        return max(min(int(fmap_base / 2.0 ** (np.log2(r) - 1)), fmap_max), 1)

    def layer(prefix: str, fan_in: int, fan_out: int, kernel: int = 3, noise: bool = True) -> None:
        shapes.update({f"{prefix}/weight": (kernel, kernel, fan_in, fan_out), f"{prefix}/mod_weight": (w, fan_in),
                       f"{prefix}/mod_bias": (fan_in,), f"{prefix}/bias": (fan_out,)})
        if noise:
            shapes[f"{prefix}/noise_strength"] = ()

    s = "synthesis/"
    shapes[s + "4x4/Const/const"] = (1, nf(4), 4, 4)
    resolutions = [2 ** i for i in range(2, int(np.log2(res)) + 1)]
    noise = 0
    for r in resolutions:
        if r == 4:
            layer(s + "4x4/Conv", nf(4), nf(4))
        else:
            layer(f"{s}{r}x{r}/Conv0_up", nf(r // 2), nf(r))
            layer(f"{s}{r}x{r}/Conv1", nf(r), nf(r))
        layer(f"{s}{r}x{r}/ToRGB", nf(r), img_channels, kernel=1, noise=False)
        for _ in range(1 if r == 4 else 2):
            shapes[f"{s}noise{noise}"] = (1, 1, r, r)
            noise += 1
    return shapes


def tf_stylegan2_state_dict(net: tf_pickle.TFNetwork, path: str = "") -> tuple[StateDict, dict]:
    """An official TensorFlow StyleGAN2 generator (G_main, 'skip') as ada key names and init_kwargs.

    Layouts: conv weights [k, k, in, out] -> [out, in, k, k], the up-sampling convolution's kernel
    flipped (TF runs it as a transposed convolution); dense [in, out] -> [out, in]; modulation
    biases + 1 (TF adds the 1 in the graph); noise inputs [1, 1, R, R] -> [R, R]."""
    where = f"{path}: " if path else ""
    if net.build_func_name == "G_style":
        raise ConversionError(f"{where}{net.name} is a StyleGAN (v1) generator (G_style): read it with "
                              "i2spp_jax.load_generator or i2spp_jax.formats.generators.convert_file")
    synthesis = net.components.get("synthesis")
    if net.build_func_name != "G_main" or synthesis is None or \
            synthesis.build_func_name != "G_synthesis_stylegan2":
        got = synthesis.build_func_name if synthesis is not None else "none"
        raise ConversionError(f"{where}{net.name} is {net.build_func_name} with synthesis {got}; the port implements "
                              "the StyleGAN2 generator (G_main with G_synthesis_stylegan2)")
    if net.version < 4:
        raise ConversionError(f"{where}TensorFlow network version {net.version}: StyleGAN2 pickles are version 4")
    parts = [*net.components.values(), net]
    for part in parts:  # each part's own settings: a component may say what the whole does not
        pkw = part.static_kwargs
        if pkw.get("label_size", 0):
            raise ConversionError(f"{where}conditional generators (label_size={pkw['label_size']}) are not supported")
        for name, default in _TF_FIXED.items():
            if name in pkw and pkw[name] != default:
                raise ConversionError(f"{where}{name}={pkw[name]!r}: the port implements only {default!r}")
        unknown = sorted(set(pkw) - _TF_HARMLESS - set(_TF_FIXED))
        if unknown:
            raise ConversionError(f"{where}unknown network setting(s) {unknown}: not a StyleGAN2 generator this port "
                                  "implements")
    kw = {k: v for part in parts for k, v in part.static_kwargs.items()}  # G_main's own settings last
    tf = tf_pickle.tf_variables(net)
    tf_pickle.check_variables(tf, tf_expected_shapes(kw, where), where)
    for name in ("lod", "synthesis/lod"):
        if name in tf:
            tf_pickle.check_variables(tf, {name: ()}, where)
    res = int(kw.get("resolution", 1024))
    sd: StateDict = {"mapping.w_avg": tf["dlatent_avg"]}
    for name, value in tf.items():
        if m := re.fullmatch(r"mapping/Dense(\d+)/(weight|bias)", name):
            sd[f"mapping.fc{m[1]}.{m[2]}"] = value.T if m[2] == "weight" else value
    conv_names = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}
    for name, value in tf.items():
        if name == "synthesis/4x4/Const/const":
            sd["synthesis.b4.const"] = value[0]
        elif m := re.fullmatch(r"synthesis/(\d+)x\1/(Conv|Conv0_up|Conv1|ToRGB)/(\w+)", name):
            r, layer, leaf = m[1], conv_names[m[2]], m[3]
            key = f"synthesis.b{r}.{layer}"
            if leaf == "weight":
                w = value[::-1, ::-1] if m[2] == "Conv0_up" else value
                sd[f"{key}.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
            elif leaf == "mod_weight":
                sd[f"{key}.affine.weight"] = value.T
            elif leaf == "mod_bias":
                sd[f"{key}.affine.bias"] = value + 1
            elif leaf in ("bias", "noise_strength"):
                sd[f"{key}.{leaf}"] = value
            else:
                raise ConversionError(f"{where}unknown variable {name}")
        elif m := re.fullmatch(r"synthesis/noise(\d+)", name):
            i = int(m[1])  # noise0 = 4x4's conv; then two per resolution
            r, layer = (4, "conv1") if i == 0 else (2 ** ((i + 1) // 2 + 2), "conv0" if i % 2 else "conv1")
            sd[f"synthesis.b{r}.{layer}.noise_const"] = value[0, 0]
        elif name not in ("lod", "synthesis/lod", "dlatent_avg") and not name.startswith("mapping/"):
            raise ConversionError(f"{where}unknown variable {name} in a StyleGAN2 generator")
    init_kwargs = {"z_dim": int(kw.get("latent_size", 512)), "w_dim": int(kw.get("dlatent_size", 512)),
                   "img_resolution": res, "c_dim": 0,
                   "mapping_kwargs": {"lr_multiplier": tf_pickle.float_setting(kw, "mapping_lrmul", 0.01, where)},
                   "synthesis_kwargs": {"channel_base": int(kw.get("fmap_base", 16384)) * 2,
                                        "channel_max": int(kw.get("fmap_max", 512)), "architecture": "skip",
                                        "conv_clamp": tf_pickle.float_setting(kw, "conv_clamp", None, where)}}
    return sd, init_kwargs


# ---------------------------------------------------------------------------------------------
# Configs

def _block_res(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


# stylegan2-ada-pytorch's Generator(**init_kwargs): the settings that change nothing this port computes
# (or that the weights' shapes already say), and those it implements only at their defaults
_ADA_TOP = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
_ADA_MAPPING_HARMLESS = {"num_layers", "embed_features", "layer_features", "lr_multiplier", "w_avg_beta"}
_ADA_MAPPING_FIXED = {"activation": "lrelu"}
_ADA_SYNTHESIS_HARMLESS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "fp16_channels_last",
                           "channels_last", "use_fp16"}
_ADA_SYNTHESIS_FIXED = {"architecture": "skip", "activation": "lrelu", "resample_filter": [1, 3, 3, 1],
                        "use_noise": True, "kernel_size": 3}


def _check_ada_settings(kw: dict) -> None:
    """Refuses init_kwargs that the port would convert into a network computing something else."""
    if kw.get("c_dim", 0):
        raise ConversionError("conditional generators (c_dim > 0) are not supported")
    unknown = sorted(set(kw) - _ADA_TOP)
    for part, harmless, fixed in (("mapping_kwargs", _ADA_MAPPING_HARMLESS, _ADA_MAPPING_FIXED),
                                  ("synthesis_kwargs", _ADA_SYNTHESIS_HARMLESS, _ADA_SYNTHESIS_FIXED)):
        sub = dict(kw.get(part) or {})
        for name, default in fixed.items():
            value = sub.get(name, default)
            if (list(value) if isinstance(value, (list, tuple)) else value) != default:
                what = "synthesis architecture" if name == "architecture" else f"{part[:-7]} {name}"
                extra = {"architecture": "; StyleGAN2's generator (config-f, ada, rosinality) is 'skip'",
                         "use_noise": " (Image2StyleGAN++ optimises the noise maps)"}.get(name, "")
                raise ConversionError(f"{what} {value!r} is not supported: the port implements only {default!r}{extra}")
        unknown += [f"{part}.{k}" for k in sorted(set(sub) - harmless - set(fixed))]
    if unknown:
        raise ConversionError(f"unknown generator setting(s) {', '.join(unknown)} in init_kwargs: not a "
                              "stylegan2-ada-pytorch StyleGAN2 generator that this port implements")


def _check_ada_keys(sd: StateDict) -> None:
    """Names the architecture of a state dict that is a StyleGAN2 generator of another kind."""
    resolutions = _block_res(sd, r"synthesis\.b(\d+)\.")
    if any(re.match(r"synthesis\.b\d+\.skip\.", k) for k in sd):
        raise ConversionError("synthesis architecture 'resnet' (synthesis.bR.skip keys) is not supported: the port "
                              "implements only 'skip', StyleGAN2's generator (config-f, ada, rosinality)")
    if len(resolutions) > 1 and not any(k.startswith(f"synthesis.b{resolutions[0]}.torgb.") for k in sd):
        raise ConversionError("synthesis architecture 'orig' (toRGB only in the last block) is not supported: the "
                              "port implements only 'skip', StyleGAN2's generator (config-f, ada, rosinality)")
    complete = all(f"synthesis.b{r}.conv1.affine.weight" in sd for r in resolutions)  # else: a missing key
    if resolutions and complete and not any(k.endswith(".noise_strength") for k in sd):
        raise ConversionError("the generator has no noise inputs (use_noise=False): Image2StyleGAN++ optimises "
                              "the noise maps, so the port implements only StyleGAN2 with noise")


def ada_config(sd: StateDict, *, init_kwargs: Optional[dict] = None, conv_clamp: Any = "unset",
               mapping_lr_multiplier: Optional[float] = None) -> GeneratorConfig:
    """Topology from the weights' shapes; conv_clamp and the lr multiplier from init_kwargs or args."""
    kw = dict(init_kwargs or {})
    syn = dict(kw.get("synthesis_kwargs") or {})
    mkw = dict(kw.get("mapping_kwargs") or {})
    if "mapping.embed.weight" in sd:
        raise ConversionError("conditional generators (c_dim > 0) are not supported")
    _check_ada_settings(kw)
    _check_ada_keys(sd)
    if "synthesis_kwargs" in kw:
        clamp = syn.get("conv_clamp")
        if conv_clamp != "unset" and conv_clamp != (None if clamp is None else float(clamp)):
            raise ConversionError(f"--conv_clamp={conv_clamp} contradicts the file's own conv_clamp={clamp}: drop "
                                  "the flag (it is for state dicts that do not say)")
    elif conv_clamp != "unset":
        clamp = conv_clamp
    else:
        raise ConversionError("conv_clamp cannot be read from a state dict's shapes: convert it with `python -m "
                              "converters.stylegan2 --src=FILE --dst=DIR --conv_clamp=none` (or =256 for "
                              "stylegan2-ada's own FFHQ models), or put NAME.json (with init_kwargs, as in "
                              "shared/parity) beside the file")
    resolutions = _block_res(sd, r"synthesis\.b(\d+)\.")
    if not resolutions or resolutions[0] != 4:
        raise ConversionError("no synthesis.b4.* keys: not a StyleGAN2 synthesis network")
    fcs = _block_res(sd, r"mapping\.fc(\d+)\.weight")
    if not fcs or fcs != list(range(len(fcs))):
        raise ConversionError(f"mapping layers must be fc0..fcN, found {fcs}")
    need = "mapping.w_avg"
    if need not in sd:
        raise ConversionError(f"missing key {need} (the mean latent)")
    if "mapping_kwargs" in kw and mapping_lr_multiplier is not None and \
            float(mapping_lr_multiplier) != float(mkw.get("lr_multiplier", 0.01)):
        raise ConversionError(f"--mapping_lr_multiplier={mapping_lr_multiplier} contradicts the file's own "
                              f"lr_multiplier={mkw.get('lr_multiplier', 0.01)}: drop the flag (it is for state dicts)")
    channels = []
    for r in resolutions:
        key = f"synthesis.b{r}.conv1.weight"
        if key not in sd:
            raise ConversionError(f"missing key {key}")
        channels.append(int(sd[key].shape[0]))
    cfg = GeneratorConfig(
        z_dim=int(sd["mapping.fc0.weight"].shape[1]),
        w_dim=int(sd["mapping.w_avg"].shape[0]),
        img_resolution=resolutions[-1],
        img_channels=int(sd[f"synthesis.b{resolutions[-1]}.torgb.weight"].shape[0]),
        channels=tuple(channels),
        mapping_layers=len(fcs),
        mapping_layer_features=int(sd["mapping.fc0.weight"].shape[0]) if len(fcs) > 1 else None,
        mapping_lr_multiplier=float(mapping_lr_multiplier or mkw.get("lr_multiplier", 0.01)),
        conv_clamp=None if clamp is None else float(clamp),
    )
    if "synthesis_kwargs" in kw:
        expect = GeneratorConfig.from_channel_base(
            img_resolution=cfg.img_resolution, channel_base=syn.get("channel_base", 32768),
            channel_max=syn.get("channel_max", 512), z_dim=cfg.z_dim, w_dim=cfg.w_dim,
        ).channels
        if expect != cfg.channels:
            raise ConversionError(f"init_kwargs give channels {expect} but the weights have {cfg.channels}")
        for name, value in (("z_dim", cfg.z_dim), ("w_dim", cfg.w_dim), ("img_resolution", cfg.img_resolution)):
            if name in kw and kw[name] != value:
                raise ConversionError(f"init_kwargs say {name}={kw[name]} but the weights have {value}")
    return cfg


def rosinality_config(sd: StateDict, *, mapping_lr_multiplier: Optional[float] = None) -> GeneratorConfig:
    """Topology of a rosinality Generator from its state dict (lr_mlp defaults to 0.01)."""
    styles = _block_res(sd, r"style\.(\d+)\.weight")
    if styles != list(range(1, len(styles) + 1)):
        raise ConversionError(f"mapping layers must be style.1..style.N, found {styles}")
    n_convs = len(_block_res(sd, r"convs\.(\d+)\.conv\.weight"))
    if n_convs % 2:
        raise ConversionError(f"odd number of convs ({n_convs}): not a rosinality Generator")
    resolutions = [2**i for i in range(2, 2 + n_convs // 2 + 1)]
    channels = [int(sd["conv1.conv.weight"].shape[1])]
    channels += [int(sd[f"convs.{2 * i + 1}.conv.weight"].shape[1]) for i in range(n_convs // 2)]
    w_dim = int(sd["style.1.weight"].shape[0])
    return GeneratorConfig(
        z_dim=int(sd["style.1.weight"].shape[1]),
        w_dim=w_dim,
        img_resolution=resolutions[-1],
        img_channels=int(sd["to_rgb1.conv.weight"].shape[1]),
        channels=tuple(channels),
        mapping_layers=len(styles),
        mapping_layer_features=w_dim,
        mapping_lr_multiplier=float(mapping_lr_multiplier or 0.01),
        conv_clamp=None,
    )


# ---------------------------------------------------------------------------------------------
# Weight tables: target path (our params) -> (source key, transform)

def _drop_unit_axes(a: np.ndarray, ndim: int) -> np.ndarray:
    """Drops leading size-1 axes down to `ndim` axes ([1, 1, H, W] -> [H, W]); ValueError otherwise."""
    lead = a.ndim - ndim
    if lead < 0 or any(s != 1 for s in a.shape[:lead]):
        raise ValueError(f"cannot drop leading unit axes of {a.shape} to {ndim} dims")
    return a.reshape(a.shape[lead:])


_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda a: a,
    "dense": lambda a: a.T,  # [out, in] -> [in, out]
    "oihw": lambda a: a.transpose(2, 3, 1, 0),  # [O, I, k, k] -> [k, k, I, O]
    "1oihw": lambda a: a[0].transpose(2, 3, 1, 0),  # rosinality [1, O, I, k, k]
    "chw": lambda a: a.transpose(1, 2, 0),  # [C, 4, 4] -> [4, 4, C]
    "1chw": lambda a: a[0].transpose(1, 2, 0),
    "flat": lambda a: a.reshape(-1),  # [1, C, 1, 1] or [1, w_dim] -> [C]
    "scalar": lambda a: _drop_unit_axes(a, 0),  # [1] -> []
    "hw": lambda a: _drop_unit_axes(a, 2),  # [1, 1, H, W] -> [H, W]
}

_ADA_TABLE = [
    (r"mapping/fc(\d+)/weight", "mapping.fc{0}.weight", "dense"),
    (r"mapping/fc(\d+)/bias", "mapping.fc{0}.bias", "same"),
    (r"mapping/w_avg", "mapping.w_avg", "same"),
    (r"synthesis/b(\d+)/const", "synthesis.b{0}.const", "chw"),
    (r"synthesis/b(\d+)/(\w+)/affine/weight", "synthesis.b{0}.{1}.affine.weight", "dense"),
    (r"synthesis/b(\d+)/(\w+)/affine/bias", "synthesis.b{0}.{1}.affine.bias", "same"),
    (r"synthesis/b(\d+)/(\w+)/weight", "synthesis.b{0}.{1}.weight", "oihw"),
    (r"synthesis/b(\d+)/(\w+)/(bias|noise_const|noise_strength)", "synthesis.b{0}.{1}.{2}", "same"),
]
_ADA_FILTER_KEY = re.compile(r"synthesis\.b\d+(\.\w+)?\.resample_filter$")


def _rosinality_source(path: str) -> tuple[str, str]:
    """Our param path -> (rosinality key, transform)."""
    if m := re.fullmatch(r"mapping/fc(\d+)/(weight|bias)", path):
        return f"style.{int(m.group(1)) + 1}.{m.group(2)}", "dense" if m.group(2) == "weight" else "same"
    if path == "mapping/w_avg":
        return "latent_avg", "flat"
    if path == "synthesis/b4/const":
        return "input.input", "1chw"
    m = re.fullmatch(r"synthesis/b(\d+)/(conv0|conv1|torgb)/(.+)", path)
    if not m:
        raise ConversionError(f"no rosinality source for {path}")
    res, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
    i = int(np.log2(res)) - 3  # index of the upsampling block (b8 -> 0)
    if layer == "torgb":
        mod = "to_rgb1" if res == 4 else f"to_rgbs.{i}"
    else:
        mod = "conv1" if res == 4 else f"convs.{2 * i + (layer == 'conv1')}"
    noise_idx = 0 if res == 4 else 2 * i + 1 + (layer == "conv1")
    return {
        "weight": (f"{mod}.conv.weight", "1oihw"),
        "affine/weight": (f"{mod}.conv.modulation.weight", "dense"),
        "affine/bias": (f"{mod}.conv.modulation.bias", "same"),
        "bias": (f"{mod}.bias", "flat") if layer == "torgb" else (f"{mod}.activate.bias", "same"),
        "noise_strength": (f"{mod}.noise.weight", "scalar"),
        "noise_const": (f"noises.noise_{noise_idx}", "hw"),
    }[leaf]


def _ada_source(path: str) -> tuple[str, str]:
    for pattern, key, transform in _ADA_TABLE:
        if m := re.fullmatch(pattern, path):
            return key.format(*m.groups()), transform
    raise ConversionError(f"no stylegan2-ada source for {path}")


def _check_filter(key: str, value: np.ndarray, config: GeneratorConfig, gain: float) -> None:
    f = ops.setup_filter(config.resample_filter)
    expect = np.outer(f, f) * gain
    if value.shape != expect.shape or not np.allclose(value, expect, rtol=1e-6, atol=1e-7):
        raise ConversionError(f"{key} is not the [1,3,3,1] resample filter the port implements")


def map_params(sd: StateDict, config: GeneratorConfig, source: Callable[[str], tuple[str, str]],
               ignored: Callable[[str, np.ndarray], bool]) -> dict:
    """Fills every leaf of `config`'s params tree from `sd` via `source`; errors name the key."""
    target = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    used, out = set(), []
    for path, shape_dtype in leaves:
        p = "/".join(str(k.key) for k in path)
        key, transform = source(p)
        if key not in sd:
            raise ConversionError(f"missing key {key} (needed for {p})")
        try:
            value = _TRANSFORMS[transform](np.asarray(sd[key], np.float32))
        except (ValueError, IndexError):
            value = None
        if value is None or value.shape != shape_dtype.shape:
            raise ConversionError(f"shape mismatch for {key}: source {tuple(sd[key].shape)} cannot become "
                                  f"{p} {tuple(shape_dtype.shape)}")
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise ConversionError(f"{key} holds {bad} NaN or infinite value(s) of {value.size}: the file is damaged or "
                                  "its training diverged; convert another snapshot")
        used.add(key)
        out.append(np.array(value, np.float32, order="C"))
    unused = sorted(k for k in sd if k not in used and not ignored(k, sd[k]))
    if unused:
        raise ConversionError(f"unused key {unused[0]}" + (f" (and {len(unused) - 1} more: {unused[1:4]})"
                                                           if len(unused) > 1 else ""))
    return jax.tree_util.tree_unflatten(treedef, out)


def ada_params(sd: StateDict, config: GeneratorConfig) -> dict:
    def ignored(key, value):
        if _ADA_FILTER_KEY.match(key):
            _check_filter(key, value, config, 1.0)
            return True
        return False

    return map_params(sd, config, _ada_source, ignored)


def rosinality_params(sd: StateDict, latent_avg: np.ndarray, config: GeneratorConfig) -> dict:
    sd = dict(sd, latent_avg=np.asarray(latent_avg))

    def ignored(key, value):
        if re.fullmatch(r"(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel", key):
            _check_filter(key, value, config, 4.0)  # rosinality stores kernel * factor**2
            return True
        return False

    return map_params(sd, config, _rosinality_source, ignored)


def _parse_clamp(value: Any) -> Any:
    """--conv_clamp: "unset" (not given), None / "none" (no clamp), or a number."""
    if value is None or value == "unset":
        return value
    if isinstance(value, str) and value.lower() in ("none", "null", ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"--conv_clamp={value}: give 'none' (no clamp) or a number, e.g. 256") from None


@contextlib.contextmanager
def naming_the_file(path: str) -> Iterator[None]:
    """A ConversionError inside whose message does not name `path` gets it in front."""
    try:
        yield
    except ConversionError as e:
        if str(e).startswith((path, "--")):  # it names the file, or the flag that is wrong
            raise
        raise type(e)(f"{path}: {e}") from None


def check_source_path(path: str) -> None:
    """A missing path, a folder or an empty file, named before anything reads it."""
    if os.path.isdir(path):
        raise ConversionError(f"{path} is a folder: give the network's file (.pkl, .pt, .pth or .npz)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise torch_pickle.TruncatedFileError(f"{path} is empty (0 bytes): the download or copy did not finish; "
                                              "fetch the file again")


def mean_latent(G: Generator, samples: int, seed: int = 0) -> np.ndarray:
    """The mean of `samples` mapped z ~ N(0, I) (rosinality's `Generator.mean_latent`), [w_dim]."""
    z = np.random.RandomState(seed).randn(samples, G.z_dim).astype(np.float32)
    ws = np.concatenate([np.asarray(G.mapping(z[i:i + 1024], truncation_psi=1.0))[:, 0]
                         for i in range(0, samples, 1024)])
    return ws.mean(0)


def convert_file(path: str, *, conv_clamp: Any = "unset", mapping_lr_multiplier: Optional[float] = None,
                 tf_network: str = "Gs", mean_latent_samples: Optional[int] = None,
                 notes: Optional[list] = None) -> Generator:
    """Reads any supported source file into a Generator (see module docstring).

    Args:
      tf_network: "Gs" (the moving average: a TensorFlow pickle's Gs, an ada snapshot's G_ema, a
        rosinality checkpoint's g_ema) or "G" (the non-averaged generator of a file that holds both).
      mean_latent_samples: for a rosinality checkpoint without latent_avg (as its train.py saves them):
        estimate it as the mean of this many mapped z, as rosinality's generate.py does (4096 there).
      notes: if given, gets a sentence for each thing a user should know about the conversion.
    """
    check_source_path(path)
    notes = [] if notes is None else notes
    fmt, sd, extras = read_source(path, tf_network=tf_network)
    if "picked" in extras:
        notes.append(extras["picked"])
    with naming_the_file(path):
        if fmt in ("ada-pkl", "ada-state-dict", "tf-stylegan2"):
            init_kwargs = extras.get("init_kwargs") or (extras.get("json") or {}).get("init_kwargs")
            config = ada_config(sd, init_kwargs=init_kwargs, conv_clamp=_parse_clamp(conv_clamp),
                                mapping_lr_multiplier=mapping_lr_multiplier)
            params = ada_params(sd, config)
            if extras.get("network") == "G":
                notes.append("converted the snapshot's non-averaged G (--network=G), not G_ema")
            fp16 = int(((init_kwargs or {}).get("synthesis_kwargs") or {}).get("num_fp16_res") or 0)
            if fp16:
                notes.append(f"num_fp16_res={fp16}: the official network runs its {fp16} highest resolutions in float16 "
                             "on a GPU; this port computes in float32 and equals the official network run with "
                             "force_fp32=True (the official float16 output differs from that by about 1e-3 relative)")
            if mean_latent_samples:
                notes.append("--mean_latent_samples: ignored, the file holds its mean latent (w_avg)")
        else:
            if extras.get("network") == "G":
                notes.append("converted the checkpoint's non-averaged g (--network=G), not g_ema")
            try:
                config = rosinality_config(sd, mapping_lr_multiplier=mapping_lr_multiplier)
            except KeyError as e:
                raise ConversionError(f"{path}: missing key {e.args[0]}: not a whole rosinality Generator "
                                      "state dict") from None
            if "latent_avg" in extras:
                params = rosinality_params(sd, extras["latent_avg"], config)
            elif mean_latent_samples:
                params = rosinality_params(sd, np.zeros(config.w_dim, np.float32), config)
                w_avg = mean_latent(Generator(params=params, config=config), int(mean_latent_samples))
                params["mapping"]["w_avg"] = w_avg
                notes.append(f"latent_avg estimated as the mean of {int(mean_latent_samples)} mapped z (seed 0), as "
                             "rosinality's generate.py does; truncation and the embeddings' start use it")
            else:
                raise ConversionError(f"{path}: rosinality checkpoint without 'latent_avg' (the mean w needed for "
                                      "truncation and for initialising embeddings; its train.py does not save it): "
                                      "pass --mean_latent_samples=4096 to estimate it as rosinality's generate.py does")
    return Generator(params=jax.tree_util.tree_map(np.asarray, params), config=config)
