#!/usr/bin/env python3
"""Chain a compile's shard.onnx files with ONNX Runtime, following its transmission
map, and compare the logits with the fixture's reference.safetensors.

    python check_shards.py OUT FIXTURE_DIR [--tolerance T] [--against SAVED] [--unfused]

--tolerance: the limit against the reference, a fraction of max(1, max |value|)
(default 1e-4; quantized packages differ from the f32 model by their quantization).
--against: a file `shardc verify --save` wrote for the same packages and inputs; every
output must then also equal shardc's own runtime on the same packages within 1e-4 of
max(1, max |value|) — for quantized packages, the check that ONNX Runtime and shardc
read the same quantized weights the same way.

--unfused: ONNX Runtime with its graph optimisations off, for models that quantize
their activations (QDQ pairs, DynamicQuantizeLinear): its fusions into QLinear* kernels
round differently from what the graph says, and a flipped code moves a random fixture's
logits visibly; the fixture's reference was made the same way.

Needs only onnxruntime and numpy (safetensors files are read by hand).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[8 + n + begin : 8 + n + end]
        out[name] = np.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def empty_input(arg):
    """A zero-length cache (past = 0) or anything the client must provide."""
    dims = []
    for d in arg.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d == "batch":
            dims.append(1)
        elif d == "past":
            dims.append(0)
        else:
            raise SystemExit(f"input {arg.name}: cannot size dim {d!r}")
    return np.zeros(dims, dtype=np.float32)


def main():
    args = sys.argv[1:]
    tolerance, against, unfused = 1e-4, None, False
    if "--unfused" in args:
        args.remove("--unfused")
        unfused = True
    while len(args) > 2:
        flag, value = args[-2], args[-1]
        if flag == "--tolerance":
            tolerance = float(value)
        elif flag == "--against":
            against = read_safetensors(value)
        else:
            raise SystemExit(f"unknown argument {flag}")
        args = args[:-2]
    out, fixture = Path(args[0]), Path(args[1])
    ref = read_safetensors(fixture / "reference.safetensors")
    tmap = json.loads((out / "transmission_map.json").read_text())
    generation = tmap.get("generation")
    # What the client sends: the graph inputs, from the reference by name (a language
    # model's token input is the reference's input_ids).
    client_inputs = [t["tensor"] for t in tmap["transfers"] if t["from"] == "client"]
    bus = {}
    for name in client_inputs:
        source = "input_ids" if generation and name == generation["token_input"] else name
        if source not in ref:
            raise SystemExit(f"the reference has no `{source}` for input `{name}`")
        bus[name] = ref[source]
    cache = {n for names in tmap.get("device_local", {}).values() for n in names}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # ONNX Runtime fuses an int4 DequantizeLinear feeding a MatMul into its MatMulNBits,
    # which by default (accuracy level 4) quantizes the activations to int8 too: an
    # approximation of the graph (~0.5 of the logits' range on the fixtures). Level 0
    # keeps the fusion and computes what the graph says, in f32.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if unfused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for device in tmap["stages"]:
        sess = ort.InferenceSession(str(out / device / "shard.onnx"), opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for arg in sess.get_inputs():
            if arg.name in bus:
                feeds[arg.name] = bus[arg.name]
            elif arg.name in cache:
                feeds[arg.name] = empty_input(arg)
            else:
                raise SystemExit(f"{device}: input {arg.name} is neither sent by an earlier stage nor the client")
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, sess.run(names, feeds)):
            bus[name] = value
    # What the client receives, against the reference (a language model's logits are
    # the reference's logits).
    outputs = [t["tensor"] for t in tmap["transfers"] if t["to"] == ["client"]]
    worst = 0.0
    for name in outputs:
        expected_name = "logits" if generation and name == generation["logits"] else name
        if expected_name not in ref:
            continue
        got, expected = bus[name], ref[expected_name]
        diff = float(np.abs(got - expected).max())
        limit = tolerance * max(1.0, float(np.abs(expected).max()))
        worst = max(worst, diff / limit)
        status = "ok" if diff <= limit else "FAILED"
        print(f"{status}: {out.name} ({len(tmap['stages'])} stages) `{name}` vs {fixture.name}: "
              f"max |diff| {diff:.3e} (limit {limit:.3e})")
        if against is not None:
            key = f"packages.{expected_name}"
            if key not in against:
                raise SystemExit(f"{key} is not in the --against file")
            mine = against[key]
            got_flat = got.reshape(mine.shape) if got.size == mine.size else got
            diff = float(np.abs(got_flat - mine).max()) if got.size == mine.size else float("inf")
            limit = 1e-4 * max(1.0, float(np.abs(mine).max()))
            worst = max(worst, diff / limit)
            status = "ok" if diff <= limit else "FAILED"
            print(f"{status}: {out.name} `{name}` in ONNX Runtime vs shardc's runtime on the same packages: "
                  f"max |diff| {diff:.3e} (limit {limit:.3e})")
    if not outputs or worst > 1.0:
        sys.exit(1)


if __name__ == "__main__":
    main()
