"""The numbers README.md quotes for its demo commands are what those commands print today.

Each case runs one README command with no other flags (the shipped generator, the demo's settings)
and reads its metrics file; every quoted number must be the run's value as the README rounds it. The
runs are the README's own: on the development machine's CPU (2 cores) the demos are deterministic,
so a failure here means the README went stale after a change of the code's float rounding. On
another CPU, XLA's rounding moves the longer optimisations' results: the README's table of the same
numbers per processor has a column for each one measured, and on a CPU its header names (e.g. "AMD
EPYC") the runs are held to that column instead. These tests are slow end-to-end runs (`pytest -m
slow`), for the developers before an issue is resolved.
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def readme_text() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return " ".join(f.read().split())  # line breaks fall anywhere in a sentence


def quoted(pattern: str) -> list[str]:
    """The numbers the README quotes where `pattern` ({} = a number) matches, as written."""
    match = re.search(re.escape(pattern).replace(re.escape("{}"), NUMBER), readme_text())
    assert match, f"README.md no longer says {pattern!r}"
    return list(match.groups())


TABLE_HEAD = "| command: the numbers quoted for it, in order |"


def processor_table() -> tuple[list[str], dict[str, list[list[str]]]]:
    """The README's table of the demo numbers per processor: (its column headers, {command: [the
    numbers as written, per column]}); column 0 is the quoted one."""
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEAD))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    headers = cells(lines[start])[1:]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first, *cols = cells(line)
        rows[first.split(":")[0]] = [c.split(" / ") for c in cols]
    return headers, rows


def processor_column(model: str, headers: list[str]) -> int:
    """The table's column for a CPU whose model name is `model`: the first header after the quoted
    one that the name holds, else 0 (the quoted numbers)."""
    return next((i for i, h in enumerate(headers) if i and h in model), 0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        import platform
        return platform.processor()


def rounding(text: str) -> float:
    """Half a unit of the last digit `text` gives: 43.2 -> 0.05; 36400 -> 50 (trailing zeros rounded)."""
    if "." in text:
        return 0.5 * 10.0 ** -len(text.split(".")[1])
    return 0.5 * 10.0 ** (len(text) - len(text.rstrip("0")))


def _phase(m: dict, target: str, i: int) -> float:
    return m["targets"][target]["per_phase"][i]["psnr"]


def _folder(m: dict, i: int, stat: str) -> float:
    return m["summary"]["psnr_per_phase"][i][stat]


# command, its metrics file, and per README sentence: the pattern and the run's values in order
CASES = {
    "reconstruct": ("metrics.json", [
        ("reach {} dB on the rendered target", [lambda m: _phase(m, "rendered", 0)]),
        ("and {} dB on the real photograph", [lambda m: _phase(m, "real", 0)]),
        ("fits both almost exactly ({} and {} dB)", [lambda m: _phase(m, "rendered", 1),
                                                     lambda m: _phase(m, "real", 1)]),
    ]),
    "embed_folder": ("manifest.json", [
        ("the W+ phase reached {} dB mean ({} dB minimum) on the six real photographs",
         [lambda m: _folder(m, 0, "mean"), lambda m: _folder(m, 0, "min")]),
        ("the noise phase {} dB mean ({} minimum", [lambda m: _folder(m, 1, "mean"), lambda m: _folder(m, 1, "min")]),
    ]),
    "inpaint": ("metrics.json", [
        ("filling 0 {} dB, the mean-latent fill {} dB", [lambda m: m["measured"]["hole_psnr_filling0_from_w_avg"],
                                                         lambda m: m["measured"]["hole_psnr_mean_latent_fill"]]),
    ]),
    "crossover": ("metrics.json", [
        ("The seam's mean neighbour step: {} against {} for a cut and paste",
         [lambda m: m["measured"]["seam_step_result"], lambda m: m["measured"]["seam_step_cut_and_paste"]]),
    ]),
    "scribble": ("metrics.json", [
        ("(reach {}) and keeps {} dB away from them", [lambda m: m["measured"]["edit_reach_inside_scribbles"],
                                                       lambda m: m["measured"]["psnr_away_from_scribbles_vs_original"]]),
        ("the edit starts from: {} dB in this run", [lambda m: m["measured"]["psnr_w_embedding_vs_original"]]),
    ]),
    "style_transfer": ("metrics.json", [
        ("falls from {} (the content's W+ embedding) to {} after M_st and {} after the noise phase",
         [lambda m: m["measured"]["gram_distance_in_mask_embedding"],
          lambda m: m["measured"]["gram_distance_in_mask_after_m_st"],
          lambda m: m["measured"]["gram_distance_in_mask_stylized"]]),
        ("the content comes back exactly ({} dB)", [lambda m: m["measured"]["psnr_outside_mask_vs_content"]]),
    ]),
    "feature_transfer": ("metrics.json", [
        ("each region keeps its source at {} / {} dB", [lambda m: m["measured"]["true_latents_psnr_mask_region_vs_a"],
                                                        lambda m: m["measured"]["true_latents_psnr_rest_vs_b"]]),
        ("b's region fails ({} dB), because a's W+ embedding reached only {} dB",
         [lambda m: m["measured"]["psnr_rest_vs_b_rendering"], lambda m: m["measured"]["psnr_embedding_a"]]),
    ]),
}
ARGS = {"embed_folder": ["--images=i2spp_jax/assets/fmnist_test"]}  # the README's folder command


def test_the_processor_table_quotes_the_sentences_numbers():
    """The README's per-processor table: a row per command, each column as many numbers as the
    command's sentences quote, its first column the sentences' own numbers; a CPU finds its column."""
    headers, rows = processor_table()
    assert headers[0] == "Intel Xeon (quoted)" and len(headers) >= 2
    assert sorted(rows) == sorted(CASES)
    for command, (_, sentences) in CASES.items():
        texts = [t for pattern, _ in sentences for t in quoted(pattern)]
        assert rows[command][0] == texts, command
        assert all(len(col) == len(texts) for col in rows[command]), command
    assert processor_column("AMD EPYC 9R14 96-Core Processor", headers) == headers.index("AMD EPYC")
    assert processor_column("Intel(R) Xeon(R) Platinum 8488C", headers) == 0
    assert processor_column("", headers) == 0


def test_rounding_and_quoting():
    assert rounding("43.2") == pytest.approx(0.05) and rounding("0.50") == pytest.approx(0.005)
    assert rounding("36400") == 50 and rounding("7") == 0.5
    assert quoted("The seam's mean neighbour step: {} against {} for a cut and paste")  # the README says it
    with pytest.raises(AssertionError, match="no longer says"):
        quoted("a sentence the README does not hold {}")


@pytest.mark.slow  # seven README commands end to end (about 6 minutes on the 2-core CPU): `pytest -m slow`
@pytest.mark.parametrize("command", sorted(CASES))
def test_readme_quotes_what_the_demo_commands_print(command, tmp_path):
    out = tmp_path / command
    p = subprocess.run([sys.executable, "-m", f"experiments.{command}", f"--out={out}", *ARGS.get(command, [])],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics_file, sentences = CASES[command]
    with open(out / metrics_file) as f:
        m = json.load(f)
    headers, rows = processor_table()
    col = processor_column(cpu_model(), headers)
    if col:  # a processor of its own column: the runs are held to that column's numbers
        values = [v for _, vs in sentences for v in vs]
        for text, value in zip(rows[command][col], values, strict=True):
            assert abs(float(text) - value(m)) <= rounding(text) + 1e-9, (
                f"README.md's table says {text} for {command} on {headers[col]}; the run gives {value(m):.6g}")
        return
    for pattern, values in sentences:
        for text, value in zip(quoted(pattern), values, strict=True):
            assert abs(float(text) - value(m)) <= rounding(text) + 1e-9, (
                f"README.md says {pattern!r} with {text}; `python -m experiments.{command}` gives {value(m):.6g}")
