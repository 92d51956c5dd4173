"""Summarise an XLA dump folder (XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text): one line per
compiled module, largest first, with its total buffer bytes and its largest buffers' shapes, from
the *memory-usage-report.txt files XLA writes after optimisation. Used by gpu_benchmark.sh's
"alg2_diag" part to name the program behind XLA's "Can't reduce memory use below ... by
rematerialization" warnings. Usage: python experiments/configs/xla_memory_summary.py DIR [TOP]"""
import glob
import os
import re
import sys


BUFFER_ROW = re.compile(r"\s+[\d.]+\w*\(\s*\d+%\);")  # "  cumulative(pct%); size; offset; values; shapes"


def summarise(folder: str, top: int = 3) -> list[str]:
    rows = []
    for path in glob.glob(os.path.join(folder, "*memory-usage-report.txt")):
        with open(path) as f:
            text = f.read()
        total = re.search(r"Total bytes: (\d+)", text)
        if not total:
            continue
        cells = [ln.split(";") for ln in text.splitlines() if BUFFER_ROW.match(ln)]
        name = os.path.basename(path).split("-memory-usage-report")[0]
        rows.append((int(total.group(1)), name, [(c[1].strip(), c[-1].strip()) for c in cells]))  # (size, shapes)
    rows.sort(key=lambda r: -r[0])
    out = []
    for total, name, bufs in rows:
        largest = sorted(bufs, key=lambda b: -_bytes(b[0]))[:top]
        out.append(f"{total / 2**30:9.2f} GiB  {name}  largest: " + " | ".join(f"{s} {shape[:120]}" for s, shape in largest))
    return out


def _bytes(s: str) -> float:
    m = re.match(r"([\d.]+)(\w*)", s)
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}.get(m.group(2), 1)
    return float(m.group(1)) * scale


if __name__ == "__main__":
    print("\n".join(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)))
