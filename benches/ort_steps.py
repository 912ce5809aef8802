#!/usr/bin/env python3
"""Time ONNX Runtime (one thread, sequential) on a shard.onnx: a prompt step from an
empty KV cache, then a decode step fed the prompt step's cache; print JSON with the
medians and both steps' last-position logits. Called by `cargo bench -p shardc --bench
ort`, which writes SPEC.json: {"model", "token_input", "logits", "cache": [[past,
present], ...], "ids", "runs"}.

    python ort_steps.py SPEC.json
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    pairs = dict(spec["cache"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(spec["model"], opts, providers=["CPUExecutionProvider"])
    inputs = {a.name: a for a in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]

    def empty(arg):
        return np.zeros([0 if d == "past" else 1 if isinstance(d, str) else d for d in arg.shape], np.float32)

    prompt = np.array(spec["ids"], np.int64).reshape(1, -1)
    feeds = {spec["token_input"]: prompt}
    feeds.update({n: empty(inputs[n]) for n in pairs})
    first = dict(zip(names, sess.run(names, feeds)))
    step = {spec["token_input"]: np.array([[7]], np.int64)}
    step.update({past: first[present] for past, present in pairs.items()})
    second = dict(zip(names, sess.run(names, step)))

    def median(feeds, n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            sess.run(names, feeds)
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1e3)

    prefill_ms, decode_ms = [], []
    for _ in range(spec["runs"]):
        prefill_ms.append(median(feeds, 1))
        decode_ms.append(median(step, 3))
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "prefill_ms": float(np.median(prefill_ms)),
        "decode_ms": float(np.median(decode_ms)),
        "prefill_logits": first[spec["logits"]][0, -1].astype(float).tolist(),
        "decode_logits": second[spec["logits"]][0, -1].astype(float).tolist(),
    }))


if __name__ == "__main__":
    main()
