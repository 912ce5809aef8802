#!/usr/bin/env python3
"""Time ONNX Runtime (one thread) on a prefill and print JSON: the median time and
the last position's logits. Called by `cargo bench -p shardc --bench interpreter`.

    python ort_prefill.py MODEL.onnx TOKENS RUNS
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    path, tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    ids = (np.arange(tokens, dtype=np.int64) * 7919 % 50257).reshape(1, tokens)
    logits = sess.run(["logits"], {"input_ids": ids})[0]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(["logits"], {"input_ids": ids})
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "median_ms": float(np.median(times) * 1e3),
        "onnxruntime": ort.__version__,
        "last_logits": logits[0, -1].astype(float).tolist(),
    }))


if __name__ == "__main__":
    main()
