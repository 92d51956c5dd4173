"""Reads the official TensorFlow StyleGAN (v1) generator (G_style) into `i2spp_jax.stylegan1`'s
config and params (the pickle is read by `tf_pickle`, which runs nothing from the file).

    config, params = read_file("karras2019stylegan-ffhq-1024x1024.pkl")      # Gs; network="G" for G
"""

from typing import Any

import numpy as np

from i2spp_jax.formats import tf_pickle
from i2spp_jax.formats.errors import ConversionError
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
    net, _ = tf_pickle.pick_network(tf_pickle.load_file(path), path, network)
    return convert(net, path)


def expected_shapes(config: StyleGAN1Config, mapping_fmaps: int) -> dict[str, tuple]:
    """{variable name: shape} of every variable a G_style of `config` reads (TF layouts: conv
    [k, k, in, out], dense [in, out]); the hidden width of the mapping network is `mapping_fmaps`."""
    ch, w = config.channels, config.w_dim
    shapes: dict[str, tuple] = {"dlatent_avg": (w,)}
    for i in range(config.mapping_layers):
        fan_in = config.z_dim if i == 0 else mapping_fmaps
        fan_out = w if i == config.mapping_layers - 1 else mapping_fmaps
        shapes.update({f"mapping/Dense{i}/weight": (fan_in, fan_out), f"mapping/Dense{i}/bias": (fan_out,)})

    def layer(prefix: str, fan_in: int, c: int, with_weight: bool = True) -> None:
        shapes.update({f"{prefix}/bias": (c,), f"{prefix}/Noise/weight": (c,), f"{prefix}/StyleMod/weight": (w, 2 * c),
                       f"{prefix}/StyleMod/bias": (2 * c,)})
        if with_weight:
            shapes[f"{prefix}/weight"] = (3, 3, fan_in, c)

    s = "synthesis/"
    shapes[s + "4x4/Const/const"] = (1, ch[0], 4, 4)
    layer(s + "4x4/Const", ch[0], ch[0], with_weight=False)
    layer(s + "4x4/Conv", ch[0], ch[0])
    for i, r in enumerate(config.block_resolutions[1:], start=1):
        layer(f"{s}{r}x{r}/Conv0_up", ch[i - 1], ch[i])  # the fused transposed conv stores [k, k, in, out] too
        layer(f"{s}{r}x{r}/Conv1", ch[i], ch[i])
    for i, (h, w_) in enumerate(config.noise_shapes):
        shapes[f"{s}noise{i}"] = (1, 1, h, w_)
    shapes.update({s + "ToRGB_lod0/weight": (1, 1, ch[-1], config.img_channels),
                   s + "ToRGB_lod0/bias": (config.img_channels,)})
    return shapes


def _config(kw: dict, where: str) -> StyleGAN1Config:
    """The topology from the network's settings (the official defaults where a setting is absent)."""
    res = tf_pickle.resolution_setting(kw, where)
    fmap_base = tf_pickle.int_setting(kw, "fmap_base", 8192, where)
    fmap_max = tf_pickle.int_setting(kw, "fmap_max", 512, where)
    lrmul = tf_pickle.float_setting(kw, "mapping_lrmul", 0.01, where)
    cutoff = kw.get("truncation_cutoff", 8)
    if cutoff is not None:
        cutoff = tf_pickle.int_setting(kw, "truncation_cutoff", 8, where, lowest=0)
    return StyleGAN1Config(
        z_dim=tf_pickle.int_setting(kw, "latent_size", 512, where),
        w_dim=tf_pickle.int_setting(kw, "dlatent_size", 512, where), img_resolution=res,
        img_channels=tf_pickle.int_setting(kw, "num_channels", 3, where),
        # nf(stage) of the official G_synthesis (fmap_decay 1), for the blocks 4x4 (stage 1) up to res
        channels=tuple(min(int(fmap_base / 2.0 ** stage), fmap_max) for stage in range(1, int(np.log2(res)))),
        mapping_layers=tf_pickle.int_setting(kw, "mapping_layers", 8, where), mapping_lr_multiplier=float(lrmul),
        truncation_cutoff=cutoff, fused_scale_from={"auto": 128, True: 8, False: 2 * res}[kw.get("fused_scale", "auto")])


def convert(net: tf_pickle.TFNetwork, path: str = "") -> tuple[StyleGAN1Config, dict]:
    """(config, params) of a G_style network; what the port does not implement is refused by name, and
    a variable that is missing, of another shape than the settings give, or not finite, is named."""
    where = f"{path}: " if path else ""
    synthesis = net.components.get("synthesis")
    if net.build_func_name != "G_style" or synthesis is None or synthesis.build_func_name != "G_synthesis":
        raise ConversionError(f"{where}{net.name} is {net.build_func_name}, not StyleGAN (v1)'s G_style")
    if "mapping" not in net.components:
        raise ConversionError(f"{where}{net.name} has no mapping component: the file is damaged: fetch it again")
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
    v = tf_pickle.tf_variables(net)
    for name in ("lod", "synthesis/lod"):  # progressive growing's counters: a scalar, 0 when finished
        if name in v and v[name].shape != ():
            raise ConversionError(f"{where}variable {name} has shape {v[name].shape}, expected (): the file is damaged")
    lod = float(v.get("synthesis/lod", 0.0))
    if lod != 0.0:
        raise ConversionError(f"{where}lod={lod}: a network in the middle of progressive growing (its output blends "
                              "two resolutions); convert a finished one (lod 0)")
    config = _config(kw, where)
    tf_pickle.check_variables(v, expected_shapes(config, tf_pickle.int_setting(kw, "mapping_fmaps", 512, where)),
                              where)
    v = {k: np.asarray(a, np.float32) for k, a in v.items()}
    used = set()

    def take(name):
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
