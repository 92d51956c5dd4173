"""experiments/configs/gpu_benchmark.sh's own logic, run here with stand-ins for python3 and nvidia-smi
(the real parts need a GPU and a stylegan2-ada-pytorch checkout): its refusals, an earlier run's files
kept, a failed step in the exit status, and its clean-up limited to its own processes."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "configs", "gpu_benchmark.sh")

FAKE_PYTHON = """#!/bin/bash
if [ "$1" = -c ]; then echo "python (stand-in)"; exit 0; fi
out=""; for a in "$@"; do case $a in --out=*) out=${a#--out=};; esac; done
mkdir -p "$out" && echo "{\\"run\\": \\"$FAKE_RUN\\"}" > "$out/benchmark.json"
[ -z "$FAKE_FAIL" ]
"""


@pytest.fixture
def place(tmp_path):
    """A working folder with the carried paths (empty stand-ins), and bin/ (python3 and nvidia-smi
    stand-ins) and nogpu/ (python3 alone)."""
    official = tmp_path / ".official" / "stylegan2-ada-pytorch"
    for d in ("dnnlib", "torch_utils", "training"):
        (official / d).mkdir(parents=True)
    (official / "training" / "networks.py").write_text("")
    (tmp_path / ".official" / "vgg16_trunk.npz").write_text("")
    for d in ("bin", "nogpu"):
        (tmp_path / d).mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("nvidia-smi", "#!/bin/bash\necho 'stand-in GPU'\n")):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    os.symlink(tmp_path / "bin" / "python3", tmp_path / "nogpu" / "python3")
    return tmp_path


def run(place, *args, gpu=True, **env):
    path = f"{place}/{'bin' if gpu else 'nogpu'}:/usr/bin:/bin"
    full = {"PATH": path, "HOME": str(place), "BENCH_WORK": str(place / "work"), **env}
    return subprocess.run(["bash", SCRIPT, *args], cwd=place, env=full,
                          capture_output=True, text=True, timeout=120)


def one_line_error(p, *words):
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_the_parts_it_accepts_are_the_parts_it_runs():
    script = open(SCRIPT).read()
    accepted = set(re.search(r'^PARTS="([^"]+)"', script, re.M)[1].split())
    assert accepted == set(re.findall(r'"\$PART" = (\w+)', script))


def test_refusals_before_anything_runs(place):
    one_line_error(run(place, str(place / "out"), "w9"), "unknown PART 'w9'", "w8")
    one_line_error(run(place, str(place / "out"), "w8", gpu=False), "no GPU here", "BENCH_FLAGS")
    (place / ".official" / "vgg16_trunk.npz").unlink()
    one_line_error(run(place, str(place / "out"), "w8"), "no .official/vgg16_trunk.npz")
    assert not (place / "out").exists()


def test_an_earlier_run_is_kept_and_a_failed_step_is_the_exit_status(place):
    out = place / "out"
    first = run(place, str(out), "w8", FAKE_RUN="first")
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(os.listdir(out)) == ["w8_bf16_scan25.json", "w8_tf32_scan25.json"]
    second = run(place, str(out), "w8", FAKE_RUN="second", FAKE_FAIL="1")
    assert second.returncode == 1 and "did not finish: w8_tf32_scan25 w8_bf16_scan25" in second.stdout, second.stdout
    [old] = [p for p in os.listdir(place) if p.startswith("out.old-")]
    assert '"first"' in (place / old / "w8_tf32_scan25.json").read_text()
    assert '"second"' in (out / "w8_tf32_scan25.json").read_text()


def test_the_clean_up_after_a_step_leaves_other_benchmarks_alone(place):
    """It kills a timed-out step's side processes; before, its pattern matched every benchmark side
    process on the machine (another user's, or another run's)."""
    other = subprocess.Popen(["bash", "-c", 'exec -a "python3 -m experiments.benchmark --out=/elsewhere --role=jax" '
                              'sleep 60'])
    try:
        assert run(place, str(place / "out"), "w8").returncode == 0
        assert other.poll() is None, "another benchmark's side process was killed"
    finally:
        other.kill()
        other.wait()
