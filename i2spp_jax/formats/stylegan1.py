"""Reads the official TensorFlow StyleGAN (v1) generator (G_style) into `i2spp_jax.stylegan1`'s
config and params (the pickle is read by `tf_pickle`, which runs nothing from the file).

    config, params = read_file("karras2019stylegan-ffhq-1024x1024.pkl")      # Gs; network="G" for G
"""

from typing import Any

import numpy as np

from i2spp_jax.formats import tf_pickle
from i2spp_jax.formats.stylegan2 import ConversionError, UnknownFormatError
from i2spp_jax.stylegan1 import StyleGAN1Config

# settings the port implements only at the official defaults: {name: allowed values}
_FIXED = {"use_styles": (True,), "const_input_layer": (True,), "use_noise": (True,), "nonlinearity": ("lrelu",),
          "mapping_nonlinearity": ("lrelu",), "use_wscale": (True,), "use_pixel_norm": (False,),
          "use_instance_norm": (True,), "blur_filter": ([1, 2, 1],), "fmap_decay": (1.0,),
          "normalize_latents": (True,), "label_size": (0,), "structure": ("auto", "linear", "recursive"),
          "fused_scale": ("auto", True, False), "dtype": ("float32",)}
_HARMLESS = {"num_channels", "resolution", "fmap_base", "fmap_max", "latent_size", "dlatent_size", "mapping_layers",
             "mapping_fmaps", "mapping_lrmul", "dlatent_broadcast", "truncation_psi", "truncation_cutoff",
             "dlatent_avg_beta", "style_mixing_prob", "randomize_noise", "is_template_graph", "force_clean_graph",
             "is_training", "is_validation", "components"}


def read_file(path: str, network: str = "Gs") -> tuple[StyleGAN1Config, dict]:
    obj = tf_pickle.load_file(path)
    names = ("G", "D", "Gs")
    if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, tf_pickle.TFNetwork) for n in obj):
        obj = dict(zip(names, obj))[network]
    if not isinstance(obj, tf_pickle.TFNetwork):
        raise UnknownFormatError(f"{path}: not an official TensorFlow network pickle")
    return convert(obj, path)


def convert(net: tf_pickle.TFNetwork, path: str = "") -> tuple[StyleGAN1Config, dict]:
    """(config, params) of a G_style network; what the port does not implement is refused by name."""
    where = f"{path}: " if path else ""
    synthesis = net.components.get("synthesis")
    if net.build_func_name != "G_style" or synthesis is None or synthesis.build_func_name != "G_synthesis":
        raise ConversionError(f"{where}{net.name} is {net.build_func_name}, not StyleGAN (v1)'s G_style")
    parts = [*net.components.values(), net]
    for part in parts:
        kw = part.static_kwargs
        for name, allowed in _FIXED.items():
            if name in kw and kw[name] not in allowed:
                raise ConversionError(f"{where}{name}={kw[name]!r}: the port implements {allowed[0]!r}")
        unknown = sorted(set(kw) - _HARMLESS - set(_FIXED))
        if unknown:
            raise ConversionError(f"{where}unknown network setting(s) {unknown}: not a G_style this port implements")
    kw = {k: v for part in parts for k, v in part.static_kwargs.items()}
    v = {k: np.asarray(a, np.float32) for k, a in tf_pickle.tf_variables(net).items()}
    lod = float(v.get("synthesis/lod", 0.0))
    if lod != 0.0:
        raise ConversionError(f"{where}lod={lod}: a network in the middle of progressive growing (its output blends "
                              "two resolutions); convert a finished one (lod 0)")
    res = int(kw.get("resolution", 1024))
    fused = kw.get("fused_scale", "auto")
    config = StyleGAN1Config(
        z_dim=int(kw.get("latent_size", 512)), w_dim=int(kw.get("dlatent_size", 512)), img_resolution=res,
        img_channels=int(kw.get("num_channels", 3)),
        channels=tuple(int(v[f"synthesis/{r}x{r}/Conv1/weight" if r > 4 else "synthesis/4x4/Conv/weight"].shape[-1])
                       for r in [2 ** i for i in range(2, int(np.log2(res)) + 1)]),
        mapping_layers=int(kw.get("mapping_layers", 8)), mapping_lr_multiplier=float(kw.get("mapping_lrmul", 0.01)),
        truncation_cutoff=kw.get("truncation_cutoff", 8),
        fused_scale_from={"auto": 128, True: 8, False: 2 * res}[fused])
    used = set()

    def take(name):
        if name not in v:
            raise ConversionError(f"{where}missing variable {name}")
        used.add(name)
        return v[name]

    def layer(prefix, noise_index, with_weight=True):
        out = {"bias": take(f"{prefix}/bias"), "noise_strength": take(f"{prefix}/Noise/weight"),
               "style_weight": take(f"{prefix}/StyleMod/weight"), "style_bias": take(f"{prefix}/StyleMod/bias"),
               "noise_const": take(f"synthesis/noise{noise_index}")[0, 0]}
        if with_weight:
            out["weight"] = take(f"{prefix}/weight")
        return out

    s = "synthesis/"
    syn: dict[str, Any] = {"b4": {"const": dict(layer(s + "4x4/Const", 0, False),
                                                const=take(s + "4x4/Const/const")[0].transpose(1, 2, 0)),
                                  "conv": layer(s + "4x4/Conv", 1)}}
    for i, r in enumerate(config.block_resolutions[1:], start=1):
        syn[f"b{r}"] = {"conv0": layer(f"{s}{r}x{r}/Conv0_up", 2 * i), "conv1": layer(f"{s}{r}x{r}/Conv1", 2 * i + 1)}
    syn["torgb"] = {"weight": take(s + "ToRGB_lod0/weight"), "bias": take(s + "ToRGB_lod0/bias")}
    mapping = {f"fc{i}": {"weight": take(f"mapping/Dense{i}/weight"), "bias": take(f"mapping/Dense{i}/bias")}
               for i in range(config.mapping_layers)}
    mapping["w_avg"] = take("dlatent_avg")
    # the other resolutions' ToRGB (progressive growing; unused at lod 0) and the lod counters
    unused = sorted(k for k in v if k not in used and not k.startswith(s + "ToRGB_lod") and not k.endswith("lod"))
    if unused:
        raise ConversionError(f"{where}unused variable(s) {unused[:4]}: not a G_style this port implements")
    return config, {"mapping": mapping, "synthesis": syn}
