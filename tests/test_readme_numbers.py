"""The numbers README.md quotes for its demo commands are what those commands print today.

Each case runs one README command with no other flags (the shipped generator, the demo's settings)
and reads its metrics file; every quoted number must be the run's value as the README rounds it. The
runs are the README's own: on the development machine's CPU (2 cores) the demos are deterministic,
so a failure here means the README went stale after a change of the code's float rounding. On
another CPU, XLA's rounding can move the longer optimisations' results (the README says so); these
tests are slow end-to-end runs (`pytest -m slow`), for the developers before an issue is resolved.
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
    for pattern, values in sentences:
        for text, value in zip(quoted(pattern), values, strict=True):
            assert abs(float(text) - value(m)) <= rounding(text) + 1e-9, (
                f"README.md says {pattern!r} with {text}; `python -m experiments.{command}` gives {value(m):.6g}")
