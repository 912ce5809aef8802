#!/usr/bin/env python3
"""Chain a compile's shard.onnx files with ONNX Runtime, following its transmission
map, and compare the logits with the fixture's reference.safetensors.

    python check_shards.py OUT FIXTURE_DIR

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
    out, fixture = Path(sys.argv[1]), Path(sys.argv[2])
    ref = read_safetensors(fixture / "reference.safetensors")
    tmap = json.loads((out / "transmission_map.json").read_text())
    bus = {"input_ids": ref["input_ids"].astype(np.int64)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for device in tmap["stages"]:
        sess = ort.InferenceSession(str(out / device / "shard.onnx"), opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for arg in sess.get_inputs():
            if arg.name in bus:
                feeds[arg.name] = bus[arg.name]
            elif arg.name.startswith("past_key_values."):
                feeds[arg.name] = empty_input(arg)
            else:
                raise SystemExit(f"{device}: input {arg.name} is neither sent by an earlier stage nor the client")
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, sess.run(names, feeds)):
            bus[name] = value
    logits = bus["logits"]
    expected = ref["logits"]
    diff = float(np.abs(logits - expected).max())
    limit = 1e-4 * max(1.0, float(np.abs(expected).max()))
    status = "ok" if diff <= limit else "FAILED"
    print(f"{status}: {out.name} ({len(tmap['stages'])} stages) vs {fixture.name}: max |diff| {diff:.3e} (limit {limit:.3e})")
    if diff > limit:
        sys.exit(1)


if __name__ == "__main__":
    main()
