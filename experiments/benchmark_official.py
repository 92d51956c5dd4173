"""The official side of experiments/benchmark.py: stylegan2-ada-pytorch's generator, run from a
checkout the user gives (`--torch_repo`; its code is never copied into this project), doing the same
W+ and noise steps as the engine: Eq. 1 with the same λ, the same VGG16 weights and preprocessing,
the same Adam.

What is the official code here and what is not:
  * the generator is `training.networks.Generator` from the checkout, in eval mode, with its own
    custom ops (CUDA kernels on a GPU, its reference ops on the CPU) and its own default
    `fused_modconv` choice;
  * VGG16 is not part of that repository (its projector downloads a TorchScript VGG16): the same
    trunk is built here from torch.nn layers and given this project's VGG16 weights, so that both
    sides compute the same loss;
  * target features are computed once per round, outside the iterations (as its projector does).

Only this module imports torch; experiments/benchmark.py runs it in a subprocess of its own.
"""

import importlib
import json
import os
import sys
import time
import types

import numpy as np

from i2spp_jax import host_memory

KERAS_BGR_MEAN = (103.939, 116.779, 123.68)
VGG_TRUNK = (("conv1_1", 64), ("conv1_2", 64), "M", ("conv2_1", 128), ("conv2_2", 128), "M",
             ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256))
PERCEPTUAL_LAYERS = ("conv1_1", "conv1_2", "conv2_2", "conv3_3")
PIXEL_SCALE = 127.5


class OfficialCodeError(RuntimeError):
    """The checkout cannot be imported or used; the message names the fix."""


# What the official generator imports from its checkout: its own packages, beside training/.
CHECKOUT_PARTS = ("dnnlib/util.py", "torch_utils/custom_ops.py", "torch_utils/persistence.py", "training/networks.py")


def checkout_problem(repo: str):
    """None when `repo` holds the parts of a stylegan2-ada-pytorch checkout the generator imports; else
    the one-line reason (which parts are missing, and the fix)."""
    missing = [p for p in CHECKOUT_PARTS if not os.path.isfile(os.path.join(repo, p))]
    if not missing:
        return None
    return (f"--torch_repo={repo} lacks {', '.join(missing)}: give the whole checkout of "
            "NVlabs/stylegan2-ada-pytorch (dnnlib/, torch_utils/ and training/), or leave --torch_repo out to time "
            "this project alone")


def import_official(repo: str):
    """Imports `training.networks` from a stylegan2-ada-pytorch checkout, patched for current PyTorch.

    Two run-time patches, nothing written into the checkout:
      * `dnnlib.util` imports `requests` (for downloads, unused here): a stub module stands in
        when requests is not installed;
      * `torch_utils.custom_ops.get_plugin` builds its CUDA ops with `torch.utils.cpp_extension.load`
        and then re-imports the module by name, which current PyTorch no longer allows: the
        patched version returns the module that `load` itself returns.
    """
    problem = checkout_problem(repo)
    if problem:
        raise OfficialCodeError(problem)
    import torch.utils.cpp_extension

    sys.path.insert(0, os.path.abspath(repo))
    try:
        importlib.import_module("requests")
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
    custom_ops = importlib.import_module("torch_utils.custom_ops")
    cache = {}

    def get_plugin(module_name, sources, **build_kwargs):
        if module_name not in cache:
            verbose = custom_ops.verbosity == "full"
            cache[module_name] = torch.utils.cpp_extension.load(name=module_name, sources=sources,
                                                                verbose=verbose, **build_kwargs)
        return cache[module_name]

    custom_ops.get_plugin = get_plugin
    return importlib.import_module("training.networks")


def init_kwargs(resolution: int, channel_base: int, channel_max: int, w_dim: int, mapping_layers: int) -> dict:
    return {"c_dim": 0, "z_dim": w_dim, "w_dim": w_dim, "img_resolution": resolution, "img_channels": 3,
            "mapping_kwargs": {"num_layers": mapping_layers},
            "synthesis_kwargs": {"channel_base": channel_base, "channel_max": channel_max, "conv_clamp": None}}


def make_weights(repo: str, kwargs: dict, path: str, seed: int = 0) -> None:
    """A random official generator, perturbed so that every parameter matters (random biases,
    noise strengths, w_avg), written as `path` (.npz state dict) and its NAME.json (init_kwargs),
    the format the project's converter reads."""
    import torch

    networks = import_official(repo)
    torch.manual_seed(seed)
    G = networks.Generator(**kwargs).eval().requires_grad_(False)
    rng = np.random.default_rng(seed)
    sd = {}
    for name, value in G.state_dict().items():
        a = value.cpu().numpy().astype(np.float32)
        if name.endswith(".bias") and ".affine." not in name:
            a = (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        elif name.endswith("noise_strength"):
            a = rng.uniform(0.05, 0.2, a.shape).astype(np.float32)
        sd[name] = a
    G.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
        z = torch.from_numpy(rng.standard_normal((2048, kwargs["z_dim"])).astype(np.float32))
        sd["mapping.w_avg"] = G.mapping(z, None)[:, 0].mean(0).numpy()
    np.savez(path, **sd)
    stem = path[: -len(".weights.npz")] if path.endswith(".weights.npz") else os.path.splitext(path)[0]
    with open(stem + ".json", "w") as f:
        json.dump({"format": "stylegan2-ada-pytorch G_ema state_dict", "init_kwargs": kwargs}, f, indent=1)


class TorchVGG:
    """VGG16's trunk up to conv3_3 in torch, with the project's weights and "keras" preprocessing."""

    def __init__(self, params: dict, device):
        import torch

        self.layers = []
        for item in VGG_TRUNK:
            if item == "M":
                self.layers.append("M")
                continue
            name, _ = item
            k = np.transpose(np.asarray(params[name]["kernel"], np.float32), (3, 2, 0, 1))  # HWIO -> OIHW
            self.layers.append((name, torch.from_numpy(np.ascontiguousarray(k)).to(device),
                                torch.from_numpy(np.array(params[name]["bias"], np.float32)).to(device)))  # a copy: writable
        self.mean = torch.tensor(KERAS_BGR_MEAN, device=device).reshape(1, 3, 1, 1)

    def features(self, img):
        """img [N, 3, H, W] RGB in [-1, 1] -> {layer: [N, C, h, w]} post-ReLU."""
        import torch.nn.functional as F

        x = (img.flip(1) + 1.0) * PIXEL_SCALE - self.mean  # RGB -> BGR, [0, 255], minus the means
        out = {}
        for item in self.layers:
            if item == "M":
                x = F.max_pool2d(x, 2)
                continue
            name, w, b = item
            x = F.relu(F.conv2d(x, w, b, padding=1))
            if name in PERCEPTUAL_LAYERS:
                out[name] = x
        return out


def _resize(img, size: int):
    import torch.nn.functional as F

    if img.shape[-1] == size:
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _numerics(numerics: str) -> None:
    import torch

    tf32 = numerics == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


class OfficialSide:
    """The official generator's W+ and noise steps, one round at a time (see experiments/benchmark.py)."""

    def __init__(self, *, repo: str, weights: str, batch: int, vgg_params: dict, resize_to: int, numerics: str,
                 seed: int):
        import torch

        networks = import_official(repo)
        self.device = device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _numerics(numerics)
        with open(weights[: -len(".weights.npz")] + ".json") as f:
            kwargs = json.load(f)["init_kwargs"]
        G = networks.Generator(**kwargs).eval().requires_grad_(False)
        with np.load(weights) as z:
            G.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files}, strict=True)
        self.G = G = G.to(device)
        self.vgg = TorchVGG(vgg_params, device)
        self.resize_to, self.batch = resize_to, batch
        self.layers = {n: m for n, m in G.synthesis.named_modules() if hasattr(m, "noise_const")}
        rng = np.random.default_rng(seed + 1)  # the same latents as this project's side
        w_true = rng.standard_normal((batch, G.num_ws, G.w_dim)).astype(np.float32) * 0.5
        w_true = G.mapping.w_avg + torch.from_numpy(w_true).to(device)
        with torch.no_grad():
            self.target = G.synthesis(w_true, noise_mode="const")  # [B, 3, H, W]
        # On a GPU the official ops build their CUDA kernels on first use, or fall back to slow
        # reference code with a warning (no compiler, no ninja): the record says which ran.
        ops = {name: getattr(importlib.import_module(f"torch_utils.ops.{name}"), "_plugin", None) is not None
               for name in ("bias_act", "upfirdn2d")}
        self.w_start = G.mapping.w_avg.reshape(1, 1, -1).repeat(batch, G.num_ws, 1).clone()
        self.info = {"side": "official", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "numerics": numerics + (" (allow_tf32 on)" if numerics == "tf32" else " (allow_tf32 off)"),
                     "batch": batch, "custom_cuda_ops": ops if device.type == "cuda" else "cpu: reference ops",
                     "host_memory": host_memory.describe()}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def round(self, kind: str, n: int) -> dict:
        """One optimisation of n iterations from the start; {"seconds", "loss_first", "loss_last"}."""
        _sync(self.device)
        t0 = time.perf_counter()
        w, losses = (self._w_round if kind == "w" else self._noise_round)(n)
        _sync(self.device)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "loss_first": losses[0].cpu().numpy().tolist(),
                "loss_last": losses[-1].cpu().numpy().tolist(),
                "w": None if w is None else w.cpu().numpy()}

    def peak_memory(self) -> tuple[int, str]:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "device"
        return _peak_rss(), "process RSS"

    def _w_round(self, n):
        import torch

        G, vgg, target = self.G, self.vgg, self.target
        w = self.w_start.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
        with torch.no_grad():
            feats_x = vgg.features(_resize(target, self.resize_to))
        losses = []
        for _ in range(n):
            img = G.synthesis(w, noise_mode="const")
            mse = ((img - target) * PIXEL_SCALE).square().mean(dim=(1, 2, 3))
            f = vgg.features(_resize(img, self.resize_to))
            percept = sum((f[k] - feats_x[k]).square().mean(dim=(1, 2, 3)) for k in PERCEPTUAL_LAYERS)
            loss = 1e-5 * mse + 1e-5 * percept  # [B]: each image's own loss
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            losses.append(loss.detach())
        return w.detach(), torch.stack(losses)

    def _noise_round(self, n):
        import torch

        G, target, B = self.G, self.target, self.batch
        originals = {name: layer.noise_const for name, layer in self.layers.items()}
        maps = {name: c.reshape(1, 1, *c.shape).repeat(B, 1, 1, 1).clone().requires_grad_(True)
                for name, c in originals.items()}
        for name, layer in self.layers.items():  # per-image maps [B, 1, R, R] in place of the shared buffer
            layer._buffers["noise_const"] = maps[name]
        opt = torch.optim.Adam(list(maps.values()), lr=5.0, betas=(0.9, 0.999), eps=1e-8)
        losses = []
        try:
            for _ in range(n):
                img = G.synthesis(self.w_start, noise_mode="const")
                d = (img - target) * PIXEL_SCALE
                mse1 = d.square().mean(dim=(1, 2, 3))
                mse2 = (0.0 * d).square().mean(dim=(1, 2, 3))  # (1 - M_m) = 0 without a mask, as in Eq. 1
                loss = 1e-5 * mse1 + 1e-5 * mse2
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                losses.append(loss.detach())
        finally:
            for name, layer in self.layers.items():
                layer._buffers["noise_const"] = originals[name]
        return None, torch.stack(losses)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
