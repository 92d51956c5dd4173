"""The memory traffic of a compiled program, kernel by kernel, read from its optimised HLO text.

One step of the engine's W+ step on a GPU is about 430 kernels. Each of XLA's fusions reads its
operands from device memory and writes its result, so the bytes of a fusion's distinct operands plus
its output bound what it moves. On an H200 the large elementwise and reduction fusions ran at 3.8-4.6
TB/s by that count (`compare` against a measured profile_step trace; BUILD_NOTES.md, issue 9), so
bytes / bandwidth predicts their time, and a change that moves fewer bytes can be weighed without a
GPU. Convolutions and matrix products are listed with their bytes too, but their time is their
arithmetic's.

`kernels(text)`: the kernels one iteration launches. With a while loop (the engine's `lax.scan` of
iterations per dispatch) that is the loop body's top-level instructions; without one, the entry
computation's. Free instructions (parameters, tuples, bitcasts, constants) are left out.
"""

import collections
import re

from experiments import profile_step

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
FREE_OPCODES = frozenset({"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
                          "partition-id", "replica-id", "opt-barrier"})
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OPERANDS = re.compile(r"%([\w.\-]+)")
_BODY = re.compile(r"body=%?([\w.\-]+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_BLOCK = re.compile(r"/(b\d+)/")  # a synthesis block's scope in an op_name: ".../SynthesisNetwork)/b1024/conv0/mul"
NO_WORK = FREE_OPCODES | {"broadcast", "reshape"}  # inside a fusion: index arithmetic only


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape: an array "f32[8,64]{1,0}" or a tuple of them (token and opaque parts: 0)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        total += n * DTYPE_BYTES.get(dtype, 0)
    return total


def computations(text: str) -> tuple[dict, str]:
    """({computation name: [(name, shape, opcode, operand names, line)]}, the entry's name)."""
    comps, current, entry = {}, None, None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and not line.startswith((" ", "\t")):
                current = comps.setdefault(m.group(2), [])
                entry = m.group(2) if m.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        m = profile_step._INSTR.match(line)
        if m:
            name, shape, opcode = m.groups()
            args = line[m.end():]
            depth, end = 1, 0
            for end, ch in enumerate(args):  # the operand list ends at its matching parenthesis
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    break
            current.append((name, shape, opcode, _OPERANDS.findall(args[:end]), line))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text: give the optimised module's text (as_text())")
    return comps, entry


def ops_per_element(comps: dict, fused: str) -> int:
    """How many operations a fusion's emitted code evaluates per element of its largest output: its
    expression tree with every use counted (XLA's GPU emitter recomputes an operand read through a pad,
    slice or other index change once per read), broadcasts, reshapes and bitcasts free. About 10-30 in
    the step's bandwidth-bound fusions; the bf16 step's resize gradient had 351 and ran at 0.48 TB/s on
    an H200, where its bytes alone take a quarter of its time (BUILD_NOTES.md, issue 9)."""
    instrs = {name: (opcode, operands) for name, _, opcode, operands, _ in comps[fused]}
    memo = {}

    def size(name: str) -> int:
        if name not in memo:
            opcode, operands = instrs[name]
            memo[name] = (opcode not in NO_WORK) + sum(size(o) for o in operands if o in instrs)
        return memo[name]

    root_name, _, root_op, root_operands, _ = next(i for i in comps[fused] if i[4].lstrip().startswith("ROOT"))
    roots = [o for o in root_operands if o in instrs] if root_op == "tuple" else [root_name]
    return max(size(r) for r in roots)


def kernels(text: str) -> list[dict]:
    """[{name, opcode, kind, shape, bytes_read, bytes_written, bytes, ops_per_element, source, region,
    part, direction}] of the kernels one iteration launches (see the module's docstring), in program
    order; ops_per_element is `ops_per_element` for a fusion, else 0; part is `part_of`'s."""
    comps, entry = computations(text)
    body = entry
    for _, _, opcode, _, line in comps[entry]:
        m = _BODY.search(line) if opcode == "while" else None
        if m and m.group(1) in comps:
            body = m.group(1)  # the scan's body: one iteration
            break
    index = profile_step.hlo_index(text)
    shapes = {name: shape for name, shape, _, _, _ in comps[body]}
    out = []
    for name, shape, opcode, operands, line in comps[body]:
        if opcode in FREE_OPCODES or opcode in ("while", "conditional", "call"):
            continue
        fused = _CALLS.search(line) if opcode == "fusion" else None
        info = index.get(name, {"opcode": opcode})
        read = sum(shape_bytes(shapes[o]) for o in dict.fromkeys(operands) if o in shapes)
        written = shape_bytes(shape)
        out.append({"name": name, "opcode": opcode, "kind": profile_step.work_kind(name, info, ""), "shape": shape,
                    "bytes_read": read, "bytes_written": written, "bytes": read + written,
                    "ops_per_element": ops_per_element(comps, fused.group(1)) if fused and fused.group(1) in comps else 0,
                    "source": info.get("source", ""), "region": info.get("region", "other"),
                    "part": part_of(info), "direction": profile_step.direction(info)})
    return out


def part_of(info: dict) -> str:
    """The part of the network an instruction belongs to: its synthesis block ("b1024", from the
    op_name's scope; either direction), else its region ("VGG16", "losses", "generator" for the
    mapping and the rest of G, "other")."""
    m = _BLOCK.search(info.get("op_name", ""))
    return m.group(1) if m else info.get("region", "other")


def by_part(ks: list[dict]) -> dict:
    """{part: {"kernels", "forward_gb", "backward_gb", "gb"}}: the synthesis blocks from the largest
    resolution down, then the other parts, most bytes first."""
    d = collections.defaultdict(lambda: {"kernels": 0, "forward_gb": 0.0, "backward_gb": 0.0, "gb": 0.0})
    for k in ks:
        v = d[k["part"]]
        v["kernels"] += 1
        v["gb"] += k["bytes"] / 1e9
        v[f"{k['direction']}_gb"] += k["bytes"] / 1e9

    def order(item):
        name, v = item
        return (0, -int(name[1:])) if re.fullmatch(r"b\d+", name) else (1, -v["gb"])

    return dict(sorted(d.items(), key=order))


def by_kind(ks: list[dict], tbs: float) -> dict:
    """{kind: {"kernels", "gb", "ms_at_bandwidth"}}, most bytes first; `tbs`: TB/s."""
    d = collections.defaultdict(lambda: {"kernels": 0, "gb": 0.0})
    for k in ks:
        d[k["kind"]]["kernels"] += 1
        d[k["kind"]]["gb"] += k["bytes"] / 1e9
    for v in d.values():
        v["ms_at_bandwidth"] = v["gb"] / tbs
    return dict(sorted(d.items(), key=lambda kv: -kv[1]["gb"]))


MEMORY_BOUND = ("elementwise (fused)", "reduction", "copy/transpose")


def compare(ks: list[dict], profile: dict) -> dict:
    """The model against a measured profile_step record (its "instructions"): the memory-bound kernels
    found in both under the same name and shape, each with measured ms, model bytes and the
    bandwidth they imply; totals; and how many of the measured instructions were found."""
    mine = {k["name"]: k for k in ks}
    measured = profile["summary"]["instructions"]
    rows, found = [], 0
    for m in measured:
        k = mine.get(m["op"])
        if k is None or m["shape"].split("{")[0] != k["shape"].split("{")[0]:
            continue
        found += 1
        if m["kind"] in MEMORY_BOUND and m["ms"] > 0:
            rows.append({"name": k["name"], "kind": m["kind"], "source": m.get("source", ""),
                         "direction": m.get("direction", ""), "shape": k["shape"], "ms": m["ms"],
                         "gb": k["bytes"] / 1e9, "tbs": k["bytes"] / 1e9 / m["ms"]})
    rows.sort(key=lambda r: -r["ms"])
    ms, gb = sum(r["ms"] for r in rows), sum(r["gb"] for r in rows)
    big = [r for r in rows if r["gb"] >= 0.2]
    return {"measured_instructions": len(measured), "found": found, "memory_bound": rows,
            "memory_bound_ms": ms, "memory_bound_gb": gb, "tbs": gb / ms if ms else 0.0,
            "large_ms": sum(r["ms"] for r in big), "large_gb": sum(r["gb"] for r in big),
            "large_tbs": sum(r["gb"] for r in big) / sum(r["ms"] for r in big) if big else 0.0}


_ENTRY = re.compile(r"\.entry (\w+)\(")
_LOAD = re.compile(r"\bld\.global\S*")


def ptx_loads(ptx: str) -> dict:
    """{kernel: (global loads, vector loads among them)} of the .entry functions in PTX text. A fusion
    whose loads are all scalar (ld.global.b16 or .b32, each behind its own bounds check) ran at 1.2-2.7
    TB/s on an H200, where those with vector loads (ld.global.v4) ran at 3.8-4.6: a pad fused into the
    fusion (the FIR's zero padding) makes every load conditional (BUILD_NOTES.md, issue 9). XLA names a
    fusion's kernel by the fusion with "." made "_"."""
    out = {}
    for m in _ENTRY.finditer(ptx):
        end = ptx.find("\n}", m.end())
        loads = _LOAD.findall(ptx[m.end():end if end >= 0 else len(ptx)])
        out[m.group(1)] = (len(loads), sum(1 for ld in loads if re.search(r"\.v[248]\b", ld)))
    return out


_CUDNN_CONV = re.compile(r'custom_call_target="__cudnn\$conv')
_UNKEYED = (re.compile(r',?\s*metadata=\{[^}]*\}'),
            re.compile(r'"operation_queue_id":"\d+",?'),
            re.compile(r'"(?:wait_on_operation_queues|reification_cost)":\[[^\]]*\],?'),
            re.compile(r',?\s*control-predecessors=\{[^}]*\}'))


def conv_autotune_keys(text: str) -> list[str]:
    """One key per cuDNN convolution in an optimised module, equal for two convolutions exactly when
    XLA's autotuner would tune them once: XLA keys its per-process cache by the instruction printed
    canonically with its backend config (the activation fused into it, the scales), so by the target,
    the operands' and result's shapes and layouts, window and dimension labels. Here the same from the
    text: operand names replaced by their shapes, the instruction's name, metadata and the algorithm
    chosen (by default on a compile-only device) left out. Each distinct key is autotuned once per
    process, so the distinct keys of the programs a first call compiles are the convolutions it tunes.
    Empty text (no such program compiled) has none."""
    if not text:
        return []
    comps, _ = computations(text)
    shapes = {name: shape for instrs in comps.values() for name, shape, *_ in instrs}
    keys = []
    for instrs in comps.values():
        for _, shape, opcode, operands, line in instrs:
            if opcode != "custom-call" or not _CUDNN_CONV.search(line):
                continue
            attrs = line.split(" custom-call(", 1)[1].split(")", 1)[1]  # after the operand list
            for pattern in _UNKEYED:
                attrs = pattern.sub("", attrs)
            attrs = _drop_object(attrs, '"algorithm":')
            keys.append(f"{shape} ({', '.join(shapes.get(o, o) for o in operands)}){attrs}")
    return keys


def _drop_object(text: str, key: str) -> str:
    """`text` without `key`'s JSON object (nested braces and all) and the comma after it."""
    at = text.find(key + "{")
    if at < 0:
        return text
    depth, i = 0, at + len(key)
    for i in range(at + len(key), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            break
    end = i + 1
    return text[:at] + text[end + (text[end:end + 1] == ","):]
