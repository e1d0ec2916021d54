#!/usr/bin/env python3
"""PyTorch CPU reference for minfer's training throughput (docs/training.md).

Builds the same student `distill --student init:layers=...` builds (the teacher's embedding, the
listed blocks, final norm and tied head, f32), and times plain next-token cross-entropy training
steps (forward, backward, AdamW) on windows of a text file, as `distill --alpha 0` runs them.

  python bench/train_reference_torch.py --teacher HF_FOLDER --layers 0,4,8 \
      --data ../shared/data/wikitext-2-raw/wiki.valid.raw --batch 4 --seq 64 --steps 4 --threads 2

HF_FOLDER: a Hugging Face folder of the teacher (`build/bin/convert --model X.gguf --out DIR`
makes one from a GGUF file). Prints one JSON line: tokens/s over the steps after the first
(the first step pays for allocation), and the per-step seconds.
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--layers", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    keep = [int(x) for x in a.layers.split(",")]
    model = AutoModelForCausalLM.from_pretrained(
        a.teacher, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(keep)
    model.train()
    tok = AutoTokenizer.from_pretrained(a.teacher)
    with open(a.data, encoding="utf-8") as f:
        ids = tok(f.read(), return_tensors="pt").input_ids[0]
    L = a.seq
    windows = (len(ids) - 1) // L
    g = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    times = []
    for _ in range(a.steps):
        w = torch.randint(0, windows, (a.batch,), generator=g)
        x = torch.stack([ids[i * L : i * L + L] for i in w])
        y = torch.stack([ids[i * L + 1 : i * L + L + 1] for i in w])
        t0 = time.perf_counter()
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = times[1:] if len(times) > 1 else times
    print(
        json.dumps(
            {
                "tokens_per_s": a.batch * L * len(timed) / sum(timed),
                "step_seconds": times,
                "params": sum(p.numel() for p in model.parameters()),
                "threads": a.threads,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
