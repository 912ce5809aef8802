#!/usr/bin/env python3
"""ONNX backend node conformance for shardc.

Generates ONNX's own backend node test cases with the pinned onnx package's case
generators (onnx.backend.test.case.node.collect_testcases), keeps every case whose
nodes all use ops shardc imports (`shardc ops`), and runs each through

    shardc run model.onnx --inputs inputs.safetensors --outputs outputs.safetensors

comparing every output with ONNX's expected values: rtol 1e-3 and atol 1e-4 for
floats, exact for integers and booleans, NaN where NaN is expected.

Out of scope, and counted apart: cases with string, sequence, optional or map
values, and training-mode Dropout with a non-zero ratio (it drops at random).

    python .ci/conformance.py SHARDC [--only NAME_SUBSTRING] [--keep DIR] [--list]

Exit status 1 if any in-scope case fails.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx.backend.test.case.node import collect_testcases  # noqa: E402

RTOL = 1e-3
ATOL = 1e-4

# ONNX element type -> safetensors dtype, where safetensors has one that holds the
# ONNX bytes element for element. The others travel as U8 bytes with their dtype and
# shape in the metadata (`shardc.dtype.NAME`), as shardc's README describes.
SAFETENSORS = {
    TensorProto.FLOAT: "F32",
    TensorProto.FLOAT16: "F16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "F64",
    TensorProto.INT8: "I8",
    TensorProto.INT16: "I16",
    TensorProto.INT32: "I32",
    TensorProto.INT64: "I64",
    TensorProto.UINT8: "U8",
    TensorProto.UINT16: "U16",
    TensorProto.UINT32: "U32",
    TensorProto.UINT64: "U64",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "F8_E4M3",
    TensorProto.FLOAT8E5M2: "F8_E5M2",
    TensorProto.FLOAT8E8M0: "F8_E8M0",
}
# shardc's text-IR names of the types carried in metadata.
IR_NAMES = {
    TensorProto.FLOAT8E4M3FNUZ: "f8e4m3fnuz",
    TensorProto.FLOAT8E5M2FNUZ: "f8e5m2fnuz",
    TensorProto.FLOAT4E2M1: "f4e2m1",
    TensorProto.INT4: "i4",
    TensorProto.UINT4: "u4",
}
FROM_SAFETENSORS = {v: k for k, v in SAFETENSORS.items()}
FROM_IR = {v: k for k, v in IR_NAMES.items()}
INTEGER_TYPES = {
    TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
    TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64,
    TensorProto.BOOL,
}


def to_proto(value, name: str) -> TensorProto | None:
    if isinstance(value, TensorProto):
        return value
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return numpy_helper.from_array(np.asarray(value), name)
    return None


def raw_bytes(tp: TensorProto) -> bytes:
    """The tensor's ONNX bytes (4-bit elements packed, low nibble first)."""
    if tp.HasField("raw_data") and tp.raw_data:
        return bytes(tp.raw_data)
    arr = numpy_helper.to_array(tp)
    again = numpy_helper.from_array(arr)
    if again.raw_data or arr.size == 0:
        return bytes(again.raw_data)
    raise ValueError(f"cannot get the bytes of {tp.name}")


def write_safetensors(path: Path, tensors: list[tuple[str, TensorProto]]) -> None:
    header: dict = {}
    metadata: dict = {}
    blobs = []
    offset = 0
    for name, tp in sorted(tensors, key=lambda t: t[0]):
        data = raw_bytes(tp)
        dims = [int(d) for d in tp.dims]
        if tp.data_type in SAFETENSORS:
            header[name] = {"dtype": SAFETENSORS[tp.data_type], "shape": dims,
                            "data_offsets": [offset, offset + len(data)]}
        elif tp.data_type in IR_NAMES:
            metadata[f"shardc.dtype.{name}"] = f"{IR_NAMES[tp.data_type]}[{', '.join(map(str, dims))}]"
            header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        else:
            raise ValueError(f"{name}: element type {tp.data_type} has no safetensors form")
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path: Path) -> dict[str, TensorProto]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        tp = TensorProto()
        tp.name = name
        declared = metadata.get(f"shardc.dtype.{name}")
        if declared:
            dtype, dims = declared.split("[", 1)
            tp.data_type = FROM_IR[dtype]
            dims = dims.rstrip("]").strip()
            tp.dims.extend([int(d) for d in dims.split(",")] if dims else [])
        else:
            tp.data_type = FROM_SAFETENSORS[entry["dtype"]]
            tp.dims.extend(entry["shape"])
        tp.raw_data = data[begin:end]
        out[name] = tp
    return out


def out_of_scope(case) -> str | None:
    graph = case.model.graph
    for vi in list(graph.input) + list(graph.output):
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            return f"{kind} value `{vi.name}`"
        if vi.type.tensor_type.elem_type == TensorProto.STRING:
            return f"string tensor `{vi.name}`"
    names = [vi.name for vi in graph.input]
    for inputs, _ in case.data_sets:
        given = dict(zip(names, inputs))
        for node in graph.node:
            if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
                mode = given.get(node.input[2])
                ratio = given.get(node.input[1]) if len(node.input) > 1 else None
                training = bool(np.asarray(numpy_helper.to_array(to_proto(mode, "m")))) if mode is not None else False
                r = float(np.asarray(numpy_helper.to_array(to_proto(ratio, "r")))) if ratio is not None else 0.5
                if training and r != 0.0:
                    return "training-mode Dropout (random)"
    return None


def compare(name: str, expected: TensorProto, got: TensorProto | None) -> str | None:
    if got is None:
        return f"output `{name}` missing"
    if expected.data_type != got.data_type:
        return f"output `{name}`: dtype {got.data_type}, expected {expected.data_type}"
    if list(expected.dims) != list(got.dims):
        return f"output `{name}`: shape {list(got.dims)}, expected {list(expected.dims)}"
    e = numpy_helper.to_array(expected)
    g = numpy_helper.to_array(got)
    if expected.data_type in INTEGER_TYPES:
        e64, g64 = e.astype(np.int64), g.astype(np.int64)
        if not np.array_equal(e64, g64):
            bad = int(np.sum(e64 != g64))
            return f"output `{name}`: {bad} of {e64.size} integers differ"
        return None
    e64, g64 = e.astype(np.float64), g.astype(np.float64)
    if not np.array_equal(np.isnan(e64), np.isnan(g64)):
        return f"output `{name}`: NaNs differ"
    mask = ~np.isnan(e64)
    with np.errstate(invalid="ignore"):
        ok = np.isclose(g64[mask], e64[mask], rtol=RTOL, atol=ATOL) | (g64[mask] == e64[mask])
    if not np.all(ok):
        worst = float(np.max(np.abs(g64[mask] - e64[mask])[~ok]))
        return f"output `{name}`: {int(np.sum(~ok))} of {e64.size} values off (worst |diff| {worst:.3g})"
    return None


def run_case(shardc: str, case, work: Path) -> str | None:
    onnx.save(case.model, work / "model.onnx")
    graph = case.model.graph
    for k, (inputs, outputs) in enumerate(case.data_sets):
        given = []
        for vi, value in zip(graph.input, inputs):
            given.append((vi.name, to_proto(value, vi.name)))
        write_safetensors(work / "inputs.safetensors", given)
        out_path = work / "outputs.safetensors"
        if out_path.exists():
            out_path.unlink()
        proc = subprocess.run(
            [shardc, "run", str(work / "model.onnx"), "--inputs", str(work / "inputs.safetensors"),
             "--outputs", str(out_path)],
            capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            return (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1][:400]
        got = read_safetensors(out_path)
        for vi, value in zip(graph.output, outputs):
            problem = compare(vi.name, to_proto(value, vi.name), got.get(vi.name))
            if problem:
                return f"data set {k}: {problem}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shardc")
    ap.add_argument("--only", default="")
    ap.add_argument("--keep")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    ops = set(subprocess.run([args.shardc, "ops"], check=True, capture_output=True, text=True).stdout.split())
    cases = sorted(collect_testcases(None), key=lambda c: c.name)
    passed, failed, scope, other = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            if args.only and args.only not in case.name:
                continue
            node_ops = {n.op_type for n in case.model.graph.node}
            domains = {n.domain for n in case.model.graph.node}
            if not node_ops <= ops or not domains <= {"", "ai.onnx"}:
                other += 1
                continue
            reason = out_of_scope(case)
            if reason:
                scope.append((case.name, reason))
                continue
            work = Path(args.keep) / case.name if args.keep else Path(tmp) / case.name
            work.mkdir(parents=True, exist_ok=True)
            try:
                problem = run_case(args.shardc, case, work)
            except Exception as e:  # noqa: BLE001 - report any harness failure as a failed case
                problem = f"harness: {type(e).__name__}: {e}"
            if problem:
                failed.append((case.name, problem))
                print(f"FAIL {case.name}: {problem}", flush=True)
            else:
                passed.append(case.name)
                if args.list:
                    print(f"ok   {case.name}", flush=True)
    for name, reason in scope:
        if args.list:
            print(f"out of scope {name}: {reason}")
    print(
        f"onnx {onnx.__version__} node tests: {len(passed)} passed, {len(failed)} failed, "
        f"{len(scope)} out of scope, {other} use ops outside shardc's op set"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
