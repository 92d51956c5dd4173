"""experiments.hlo_traffic (bytes per kernel from optimised HLO) and experiments.gpu_hlo (the GPU program
compiled without a GPU, or read from a file)."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import hlo_traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shape_bytes():
    assert hlo_traffic.shape_bytes("f32[8,64]{1,0}") == 8 * 64 * 4
    assert hlo_traffic.shape_bytes("(f32[2,3]{1,0}, u8[0]{0})") == 24
    assert hlo_traffic.shape_bytes("(bf16[2,2]{1,0}, pred[5]{0}, s32[])") == 8 + 5 + 4
    assert hlo_traffic.shape_bytes("token[]") == 0


def _scan_program_text(n: int = 4096) -> str:
    def f(x, y):
        def body(c, _):
            return jnp.sin(c) * y + 1.0, None  # one elementwise pass over c and y per iteration

        c, _ = jax.lax.scan(body, x, None, length=3)
        return jnp.cos(c)  # outside the loop: not one iteration's kernel

    a = jnp.ones((n,), jnp.float32)
    return jax.jit(f).lower(a, a).compile().as_text()


def test_kernels_are_the_loop_body_with_their_operands_and_output():
    n = 4096
    ks = hlo_traffic.kernels(_scan_program_text(n))
    assert all(k["opcode"] not in hlo_traffic.FREE_OPCODES | {"while"} for k in ks)
    full = [k for k in ks if k["bytes_written"] == 4 * n]
    assert full, ks
    # the pass over the carry reads it and y (two distinct f32[n] operands) and writes the new carry
    assert max(k["bytes_read"] for k in full) >= 2 * 4 * n
    assert all(k["bytes"] == k["bytes_read"] + k["bytes_written"] for k in ks)
    # cos(c) runs once after the loop: no kernel of the body is it
    assert not any("cos" in k["name"] for k in ks)


def test_ops_per_element_counts_every_read_of_a_recomputed_operand():
    """A fusion that reads sin(x) through 8 shifted slices evaluates sin 8 times per output element."""
    def shifted(x):
        s = jnp.sin(x)
        return sum(s[k:k + 1000] for k in range(8))

    text = jax.jit(shifted).lower(jnp.ones((1007,))).compile().as_text()
    ks = hlo_traffic.kernels(text)
    top = max(ks, key=lambda k: k["ops_per_element"])
    assert top["ops_per_element"] >= 8 + 8 + 7  # 8 sines, 8 slices, 7 adds at least
    plain = jax.jit(lambda x: jnp.sin(x) * 2).lower(jnp.ones((1000,))).compile().as_text()
    assert max(k["ops_per_element"] for k in hlo_traffic.kernels(plain)) <= 3


def test_ptx_loads_tells_scalar_from_vector_loads():
    ptx = """.visible .entry loop_add_fusion_16(
\t.param .u64 p0
)
{
\tld.global.nc.b16 \t%rs1, [%rd6];
\t@%p6 bra \t$L__BB0_4;
\tld.global.nc.b16 \t%rs3, [%rd8];
\tst.global.v4.b32 \t[%rd9], {%r1, %r2, %r3, %r4};
}
.visible .entry loop_multiply_fusion(
\t.param .u64 p0
)
{
\tld.global.nc.v4.b32 \t{%r1, %r2, %r3, %r4}, [%rd1];
\tld.global.nc.b32 \t%r5, [%rd2];
}
"""
    assert hlo_traffic.ptx_loads(ptx) == {"loop_add_fusion_16": (2, 0), "loop_multiply_fusion": (2, 1)}


def test_kernels_without_a_loop_are_the_entry():
    text = jax.jit(lambda x: jnp.cos(x) * 2).lower(jnp.ones((256,))).compile().as_text()
    ks = hlo_traffic.kernels(text)
    assert ks and sum(k["bytes_written"] for k in ks) >= 256 * 4


def test_kernels_refuses_text_without_an_entry():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo_traffic.kernels("HloModule m\n")


_CONV = ('  %{name} = (f32[8,64,64,32]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%{x}, %{w}, %b.1), window={{size=3x3 pad=1_1x1_1}}, '
         'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBiasActivationForward", metadata={{op_name="{op}" '
         'scheduling_name="{name}"}}, backend_config={{"operation_queue_id":"{q}","cudnn_conv_backend_config":'
         '{{"activation_mode":"{act}","conv_result_scale":1,"algorithm":{{"algo_id":"{algo}","tuning_knobs":{{"2":"1"}},'
         '"is_cudnn_frontend":true}},"leakyrelu_alpha":0}}}}')


def _conv_module(convs: list) -> str:
    lines = ["ENTRY %main (p: f32[8,64,64,32]) -> f32[8,64,64,32] {",
             "  %x.1 = f32[8,64,64,32]{3,2,1,0} parameter(0)", "  %x.2 = f32[8,64,64,32]{3,2,1,0} parameter(1)",
             "  %w.1 = f32[32,3,3,32]{3,2,1,0} parameter(2)", "  %w.2 = f32[32,3,3,16]{3,2,1,0} parameter(3)",
             "  %b.1 = f32[32]{0} parameter(4)"]
    defaults = {"x": "x.1", "w": "w.1", "op": "vgg/conv1_2", "q": "0", "act": "kRelu", "algo": "-1"}
    lines += [_CONV.format(**{**defaults, "name": f"conv.{i}", **c}) for i, c in enumerate(convs)]
    return "\n".join(lines + ["}"])


def test_conv_autotune_keys_are_the_convolution_not_its_name_place_or_algorithm():
    """Two convolutions that XLA's autotuner tunes once (the same target, shapes, window and fused
    activation) get one key, whatever their names, operands' names, metadata, queue or algorithm; a
    different fused activation or operand shape is another key."""
    same = _conv_module([{}, {"x": "x.2", "op": "targets/conv1_2", "q": "3", "algo": "17"}])
    a, b = hlo_traffic.conv_autotune_keys(same)
    assert a == b and "f32[8,64,64,32]{3,2,1,0}, f32[32,3,3,32]" in a and "kRelu" in a
    assert "algo_id" not in a and "conv1_2" not in a and "is_cudnn_frontend" not in a
    other = hlo_traffic.conv_autotune_keys(_conv_module([{}, {"act": "kNone"}, {"w": "w.2"}]))
    assert len(set(other)) == 3
    assert hlo_traffic.conv_autotune_keys("ENTRY %e () -> f32[] {\n}") == []
    assert hlo_traffic.conv_autotune_keys("") == []  # the noise step: no targets' features program


def test_compare_divides_measured_time_into_model_bytes():
    ks = [{"name": "loop_fusion.1", "shape": "f32[1000]{0}", "bytes": 2_000_000_000, "kind": "elementwise (fused)"},
          {"name": "conv.2", "shape": "f32[10]{0}", "bytes": 5, "kind": "convolution"}]
    profile = {"summary": {"instructions": [
        {"op": "loop_fusion.1", "shape": "f32[1000]{0}", "ms": 0.5, "kind": "elementwise (fused)"},
        {"op": "conv.2", "shape": "f32[10]{0}", "ms": 1.0, "kind": "convolution"},
        {"op": "loop_fusion.9", "shape": "f32[7]{0}", "ms": 0.1, "kind": "elementwise (fused)"},  # not in the model
        {"op": "conv.2x", "shape": "f32[11]{0}", "ms": 0.1, "kind": "convolution"}]}}
    c = hlo_traffic.compare(ks, profile)
    assert c["measured_instructions"] == 4 and c["found"] == 2
    assert [r["name"] for r in c["memory_bound"]] == ["loop_fusion.1"]  # convolutions are not memory-bound rows
    assert c["tbs"] == pytest.approx(4.0)  # 2 GB in 0.5 ms
    # a kernel of the same name but another shape is another kernel
    profile["summary"]["instructions"][0]["shape"] = "f32[999]{0}"
    assert hlo_traffic.compare(ks, profile)["found"] == 1


def test_parts_are_the_synthesis_blocks_largest_first_then_the_regions():
    """by_part sums each kernel into its synthesis block (from the op_name's scope: "b16" holds the
    block's layers, forward and backward) or else its region, blocks from the largest resolution down."""
    from i2spp_jax.generator import Generator, GeneratorConfig, init_params
    config = GeneratorConfig.from_channel_base(img_resolution=16, channel_base=256, channel_max=16, z_dim=8, w_dim=8,
                                               mapping_layers=2)
    G = Generator(params=init_params(config, jax.random.PRNGKey(0)), config=config)
    ws = jnp.zeros((2, G.num_ws, G.w_dim))
    loss = jax.grad(lambda w: jnp.sum(jnp.square(G.synthesis(w, fused_modconv=False))))
    ks = hlo_traffic.kernels(jax.jit(loss).lower(ws).compile().as_text())
    parts = hlo_traffic.by_part(ks)
    assert list(parts)[:3] == ["b16", "b8", "b4"]
    assert parts["b16"]["forward_gb"] > 0 and parts["b16"]["backward_gb"] > 0
    assert parts["b16"]["gb"] > parts["b4"]["gb"]  # more pixels, more bytes
    assert sum(v["kernels"] for v in parts.values()) == len(ks)
    assert sum(v["gb"] for v in parts.values()) == pytest.approx(sum(k["bytes"] for k in ks) / 1e9)
    info = {"op_name": "jit(run)/while/body/closed_call/vmap(jvp(SynthesisNetwork))/b1024/conv0/mul",
            "region": "generator"}
    assert hlo_traffic.part_of(info) == "b1024"
    assert hlo_traffic.part_of({"op_name": "jit(run)/vmap(VGG16Features)/conv1_1/conv", "region": "VGG16"}) == "VGG16"


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the record's xla_flags: the user's only
    return subprocess.run([sys.executable, "-m", "experiments.gpu_hlo", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def test_command_reads_a_module_and_compares_with_a_profile(tmp_path):
    text = _scan_program_text()
    path = tmp_path / "hlo.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    ks = hlo_traffic.kernels(text)
    big = max((k for k in ks if k["kind"] != "convolution"), key=lambda k: k["bytes"])
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"summary": {"instructions": [
        {"op": big["name"], "shape": big["shape"], "ms": 0.001, "kind": "elementwise (fused)",
         "source": "", "direction": "forward"}]}}))
    out = tmp_path / "out"
    r = _run(f"--hlo={path}", f"--profile={prof}", f"--out={out}", "--top=5")
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "gpu_hlo.json").read_text())
    assert rec["compare"]["found"] == 1
    assert rec["compare"]["tbs"] == pytest.approx(big["bytes"] / 1e9 / 0.001)
    assert sum(v["kernels"] for v in rec["by_kind"].values()) == len(ks)
    assert sum(v["kernels"] for v in rec["by_part"].values()) == len(ks)
    assert "kernels per iteration" in r.stdout and "| part (synthesis block or region) |" in r.stdout
    assert big["name"] in r.stdout and "ops per element" in r.stdout


def test_command_errors_are_one_line(tmp_path):
    r = _run(f"--hlo={tmp_path / 'missing.txt'}", f"--out={tmp_path / 'o'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--hlo=" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("not hlo\n")
    r = _run(f"--hlo={bad}", f"--out={tmp_path / 'o'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "ENTRY" in r.stderr
    r = _run(f"--hlo={bad}", f"--profile={bad}", f"--out={tmp_path / 'o'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--profile=" in r.stderr
    r = _run("--target=h300", f"--out={tmp_path / 'o'}", "--spans=false")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--target=h300" in r.stderr


def _has_cuda_plugin() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_cuda_plugin(),
                    reason="jax's CUDA plugin is not installed (experiments/gpu_hlo.py says how)")
def test_compiles_for_a_gpu_without_one(tmp_path):
    r = _run("--preset=cpu", "--resolution=32", "--resize_to=32", "--batch=2", "--steps_per_call=2",
             f"--out={tmp_path}", "--top=3")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "gpu_hlo.json").read_text())
    assert rec["device_kind"] == "NVIDIA H200"
    assert "convolution" in rec["by_kind"]  # cuDNN custom calls: a GPU program, not the CPU's
    assert any("cudnn" in json.dumps(k) for k in rec["kernels"])
    assert rec["ptx_loads"] and any("vector_loads" in k for k in rec["kernels"])  # PTX read per kernel
    assert list(rec["by_part"])[:4] == ["b32", "b16", "b8", "b4"] and rec["by_part"]["b32"]["backward_gb"] > 0
    assert not (tmp_path / "xla_dump").exists() and rec["xla_flags"] == ""  # the dump is the command's own
    # the targets' VGG16 features reuse the step's autotuned convolutions (the ReLU fused in both)
    c = rec["first_call_convolutions"]
    assert c["target_features"] > 0 and c["shared"] == c["target_features"]
    assert c["to_autotune"] == c["step"]
    # the noise step: no VGG16 terms, so no targets' features program
    r = _run("--preset=cpu", "--resolution=32", "--batch=2", "--steps_per_call=2", "--step=noise",
             f"--out={tmp_path / 'noise'}", "--top=3", "--spans=false")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "noise" / "gpu_hlo.json").read_text())["first_call_convolutions"]
    assert c["target_features"] == 0 and c["to_autotune"] == c["step"] > 0
