#!/usr/bin/env python3
"""Write a GPT-2-small-shaped ONNX model with random weights for the interpreter
benchmark (12 layers, hidden 768, 12 heads, vocabulary 50257; about 500 MB, not
committed).

    python make_gpt2_small.py OUT_DIR

Needs torch==2.5.1, transformers==4.46.3, onnx==1.17.0 (as fixtures/generate.py).
"""
import sys
from pathlib import Path

import torch
import transformers


class LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 50257, (1, 128), dtype=torch.long)
    torch.onnx.export(
        LogitsOnly(model), (ids,), str(out / "model.onnx"),
        input_names=["input_ids"], output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
        opset_version=17, do_constant_folding=True, dynamo=False,
    )
    print(f"wrote {out / 'model.onnx'}")


if __name__ == "__main__":
    main()
