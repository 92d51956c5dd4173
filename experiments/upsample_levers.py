"""The generator's up-sampling convolution three ways, layer by layer: issue 9's "FIR up-sampling" lever.

    python -m experiments.upsample_levers                                   # CPU: the benchmark's 256x256 widths
    python -m experiments.upsample_levers --preset=ffhq --batch=8 --numerics=tf32   # a GPU: config-f at 1024

StyleGAN2's conv0 of every block (`ops.conv2d_up2`) is a stride-2 transposed 3x3 convolution (output
2H+1) followed by the 4-tap FIR filter [1, 3, 3, 1] with gain 4 (output 2H). Variants, each timed
with the layer's elementwise tail (demodulation, bias, leaky ReLU: what XLA can fuse the FIR into):
  reference   the library's order: the transposed convolution, then the FIR along rows, then columns
  fir_2d      the same convolution, then the FIR as one pass of 16 taps (so that XLA can fuse all of
              it into the tail instead of writing the row-filtered map)
  polyphase   the FIR folded into the kernel: 3 + 4 - 1 = 6 taps per axis, of which each output phase
              (row and column parity) reads every other one, a 3x3 kernel over the input; one 'same'
              convolution at the input's resolution with 4*O outputs, then the phases interleaved.
              No FIR pass at all, but 4x the transposed convolution's multiply-adds (9 taps per
              phase where the transposed convolution's phases have 2.25 on average).
For each block of the preset's generator (the benchmark's sizes) and each variant: the largest
difference from the reference, and ms per call of the forward pass and of the forward pass with the
gradient with respect to the input (what the W+ step needs: the weights are not optimised), medians
of --rounds calls after a warm-up call. Prints a table; writes --out/upsample_levers.json.
"""

import json
import os

import numpy as np
from absl import flags

from experiments import cli, step_parts

VARIANTS = ("reference", "fir_2d", "polyphase")


def define_flags() -> None:
    flags.DEFINE_enum("preset", "auto", ["auto", "cpu", "ffhq"], "sizes: the benchmark's presets (auto = ffhq on a GPU)")
    flags.DEFINE_integer("batch", 1, "images per call", lower_bound=1)
    flags.DEFINE_enum("numerics", "fp32", ["fp32", "tf32", "bf16"], "as experiments.benchmark's --numerics")
    flags.DEFINE_integer("min_side", 0, "only blocks whose output side is at least this (0 = all)", lower_bound=0)
    flags.DEFINE_integer("rounds", 7, "timed calls per variant (the table shows their median)", lower_bound=1)
    flags.DEFINE_string("out", "runs/upsample_levers", "output folder (upsample_levers.json)")


def fir_2d(x, f1):
    """`ops.upfirdn2d`'s filtering (a valid true convolution with the separable f1 x f1) in one pass."""
    import jax.numpy as jnp

    taps = f1[::-1]
    oh, ow = x.shape[1] - len(taps) + 1, x.shape[2] - len(taps) + 1
    acc = None
    for i, ti in enumerate(taps):
        for j, tj in enumerate(taps):
            term = x[:, i:i + oh, j:j + ow] * jnp.asarray(ti * tj, x.dtype)
            acc = term if acc is None else acc + term
    return acc


def up_conv(variant: str, x, w, f):
    import jax

    from i2spp_jax import ops

    if variant == "reference":
        return ops.conv2d_up2(x, w, f)
    if variant == "polyphase":
        return ops.conv2d_up2(x, w, f, method="polyphase")
    pad0, pad1 = ops.up2_fir_padding(w.shape[0], len(f))
    y = ops.conv_transpose2d_up2(x, w)
    y = jax.lax.pad(y, jax.numpy.zeros((), y.dtype), [(0, 0, 0), (pad0, pad1, 0), (pad0, pad1, 0), (0, 0, 0)])
    return fir_2d(y, f * np.float32(2.0))  # gain 4: 2 per axis


def layer_shapes(preset: str) -> list[tuple[int, int, int]]:
    """(input side, input channels, output channels) of every block's up-sampling convolution."""
    cfg = step_parts.preset_config(preset)
    return [(4 * 2**i, cfg.channels[i], cfg.channels[i + 1]) for i in range(len(cfg.channels) - 1)]


def measure(preset: str, batch: int, numerics: str, rounds: int, min_side: int = 0) -> dict:
    import jax
    import jax.numpy as jnp

    from i2spp_jax import ops

    f = ops.setup_filter([1, 3, 3, 1])
    dtype = jnp.bfloat16 if numerics == "bf16" else jnp.float32
    precision = "highest" if numerics == "fp32" else "tensorfloat32"
    rows = []
    with jax.default_matmul_precision(precision):
        for side, in_ch, out_ch in layer_shapes(preset):
            if 2 * side < min_side:
                continue
            ks = jax.random.split(jax.random.PRNGKey(side), 5)
            x = jax.random.normal(ks[0], (batch, side, side, in_ch), dtype)
            w = (jax.random.normal(ks[1], (3, 3, in_ch, out_ch)) / np.sqrt(9 * in_ch)).astype(dtype)
            ct = jax.random.normal(ks[2], (batch, 2 * side, 2 * side, out_ch), dtype)
            dcoefs = 1.0 + 0.1 * jax.random.normal(ks[3], (batch, 1, 1, out_ch))
            bias = 0.1 * jax.random.normal(ks[4], (out_ch,))
            row = {"side": 2 * side, "in_channels": in_ch, "out_channels": out_ch, "variants": {}}
            ref = None
            for variant in VARIANTS:
                def layer(x, w, variant=variant):  # the SynthesisLayer's tail after the convolution
                    y = up_conv(variant, x, w, f) * dcoefs.astype(x.dtype)
                    return ops.bias_act(y, bias, act="lrelu")

                fwd = jax.jit(layer)
                bwd = jax.jit(jax.grad(lambda x, w, layer=layer: jnp.sum((layer(x, w) * ct).astype(jnp.float32))))
                out = np.asarray(fwd(x, w), np.float32)
                ref = out if ref is None else ref
                _, t_fwd = step_parts.time_calls(fwd, (x, w), rounds)
                _, t_bwd = step_parts.time_calls(bwd, (x, w), rounds)
                row["variants"][variant] = {"max_abs_diff": float(np.abs(out - ref).max()),
                                            "ms_forward": 1e3 * t_fwd, "ms_forward_input_grad": 1e3 * t_bwd}
            rows.append(row)
    return {"preset": preset, "batch": batch, "numerics": numerics, "rounds": rounds,
            "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__,
            "layers": rows}


def table(rec: dict) -> str:
    head = "| output side | in → out channels | " + " | ".join(
        f"{v} fwd ms | {v} fwd+dx ms" for v in VARIANTS) + " | largest difference (fir_2d, polyphase) |"
    lines = [head, "|" + " --- |" * (3 + 2 * len(VARIANTS))]
    totals = {v: [0.0, 0.0] for v in VARIANTS}
    for r in rec["layers"]:
        cells = []
        for v in VARIANTS:
            m = r["variants"][v]
            cells += [f"{m['ms_forward']:.2f}", f"{m['ms_forward_input_grad']:.2f}"]
            totals[v][0] += m["ms_forward"]
            totals[v][1] += m["ms_forward_input_grad"]
        diffs = ", ".join(f"{r['variants'][v]['max_abs_diff']:.1e}" for v in VARIANTS[1:])
        lines.append(f"| {r['side']} | {r['in_channels']} → {r['out_channels']} | " + " | ".join(cells) + f" | {diffs} |")
    lines.append("| all | | " + " | ".join(f"{a:.2f} | {b:.2f}" for a, b in totals.values()) + " | |")
    return "\n".join(lines)


def main(argv):
    del argv
    import jax

    F = flags.FLAGS
    preset = F.preset if F.preset != "auto" else ("ffhq" if jax.default_backend() == "gpu" else "cpu")
    rec = measure(preset, F.batch, F.numerics, F.rounds, F.min_side)
    os.makedirs(F.out, exist_ok=True)
    cli.keep_earlier(F.out, ["upsample_levers.json"])
    with open(os.path.join(F.out, "upsample_levers.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(f"\n{rec['device']} ({rec['backend']}, jax {rec['jax']}); {preset} preset's up-sampling layers, batch "
          f"{rec['batch']}, {rec['numerics']}; medians of {rec['rounds']} calls\n")
    print(table(rec))


if __name__ == "__main__":
    define_flags()
    cli.run(main, persistent_cache=False)
