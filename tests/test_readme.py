"""README.md's Python examples run as written (so that they cannot rot)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, README, "exec"), namespace)  # noqa: S102 - the README's own code
    assert os.path.exists(tmp_path / "sample.png")
    res = namespace["res"]
    assert res.vars["w_plus"].shape == (2, 8, 128) and res.history["psnr"].shape == (80, 2)
    # the example's W+ mask: the last two layers stay at their initial value (w_avg)
    w_avg = namespace["G"].w_avg
    assert float(abs(res.vars["w_plus"][:, -2:] - w_avg).max()) == pytest.approx(0.0, abs=0)
    # the applications' example: two fillings with the known pixels put back, and an I_att mix
    filled, hole = namespace["filled"], namespace["hole"]
    assert filled.images["composite"].shape == (2, 32, 32, 3)
    known = hole == 0
    assert float(abs(filled.images["composite"][:, known] - namespace["damaged"][known]).max()) < 1e-6
    assert namespace["mixed"].shape == (1, 32, 32, 3)
