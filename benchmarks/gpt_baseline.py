"""Yardstick: a small character-level transformer with nanoGPT's shakespeare_char CPU settings.

n_layer 4, n_head 4, n_embd 128, context 64, batch 12 random windows, AdamW lr 1e-3 betas (0.9, 0.99),
weight decay 0.1 on 2-D weights only, no dropout, grad clip 1.0, constant lr; pre-LN blocks, causal
scaled_dot_product_attention, GELU MLP, tied embeddings, learned positions, no biases (nanoGPT's bias=False).
Validation is a full pass over the last 10% of the text in non-overlapping 64-char windows.
Progress goes to stderr; one JSON object goes to stdout at the end.

    python benchmarks/gpt_baseline.py --minutes 10 --threads 2 --curve-out curve.json
    python benchmarks/gpt_baseline.py --quick      # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlstm.data import bundled_text


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():  # nanoGPT's init: N(0, 0.02), residual projections scaled
            if p.dim() == 2:
                residual = name.endswith(("attn.c_proj.weight", "mlp.2.weight"))
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer) if residual else 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


@torch.no_grad()
def validate(model: GPT, val: torch.Tensor, block: int, windows_per_forward: int = 256) -> float:
    """Mean loss (nats/char) over every non-overlapping window of the validation split."""
    model.eval()
    n = (len(val) - 1) // block
    x, y = val[: n * block].view(n, block), val[1 : n * block + 1].view(n, block)
    total = 0.0
    for i in range(0, n, windows_per_forward):
        total += model(x[i : i + windows_per_forward], y[i : i + windows_per_forward], reduction="sum").item()
    model.train()
    return total / (n * block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="UTF-8 text file (default: bundled Anna Karenina)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget incl. validation")
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-interval", type=int, default=250, help="validate every N steps and at the end")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20k chars, 20 steps, eval every 10, 1 thread unless --threads")
    ap.add_argument("--curve-out", type=Path, help="also write the list of eval points here as JSON")
    args = ap.parse_args()
    if args.quick:
        args.threads = args.threads or 1
        args.max_steps, args.eval_interval = min(args.max_steps, 20), 10
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n_layer, n_head, n_embd, block, batch = 4, 4, 128, 64, 12
    lr, betas, weight_decay, grad_clip = 1e-3, (0.9, 0.99), 0.1, 1.0

    text = args.data.read_text(encoding="utf-8") if args.data else bundled_text()
    if args.quick:
        text = text[:20_000]
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.from_numpy(np.array([stoi[ch] for ch in text], dtype=np.int64))
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]

    model = GPT(len(chars), block, n_layer, n_head, n_embd)
    params = list(model.parameters())  # the tied weight appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas)
    offsets = torch.arange(block)

    step_times: list[float] = []
    eval_times: list[float] = []
    curve: list[dict[str, Any]] = []
    step = 0
    loss = torch.tensor(float("nan"))

    def evaluate() -> None:
        tv = time.perf_counter()
        val_loss = validate(model, val, block)
        now = time.perf_counter()
        eval_times.append(now - tv)
        curve.append({"step": step, "elapsed_s": round(now - t_start, 3),
                      "train_loss": round(loss.item(), 4), "val_loss": round(val_loss, 4)})
        print(f"step {step} {now - t_start:7.1f}s loss {loss.item():.4f} val {val_loss:.4f} "
              f"(eval {now - tv:.2f}s)", file=sys.stderr)

    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    while step < args.max_steps and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        ix = torch.randint(len(train) - block, (batch,), generator=gen)
        x, y = train[ix[:, None] + offsets], train[ix[:, None] + offsets + 1]
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        step += 1
        step_times.append(time.perf_counter() - t0)
        if step % args.eval_interval == 0:
            evaluate()
    if step and (not curve or curve[-1]["step"] != step):
        evaluate()
    wall = time.perf_counter() - t_start
    train_s = wall - sum(eval_times)

    config = {
        "impl": "nanoGPT-style char transformer", "data": str(args.data or "bundled: Anna Karenina"),
        "text_chars": len(text), "vocab_size": len(chars), "params": sum(p.numel() for p in params),
        "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block, "batch_size": batch,
        "lr": lr, "betas": betas, "weight_decay": weight_decay, "grad_clip": grad_clip, "dropout": 0.0,
        "val_frac": 0.1, "eval_interval": args.eval_interval, "minutes": args.minutes,
        "max_steps": args.max_steps, "seed": args.seed, "quick": args.quick,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    result = {
        "config": config,
        "steps": step,
        "wall_s": round(wall, 3),
        "train_s": round(train_s, 3),
        "train_chars_per_sec": round(step * batch * block / train_s, 1) if step else None,
        "mean_step_s": round(statistics.fmean(step_times), 5) if step_times else None,
        "median_step_s": round(statistics.median(step_times), 5) if step_times else None,
        "val_passes": len(eval_times),
        "val_pass_s": round(statistics.fmean(eval_times), 3) if eval_times else None,
        "eval_fraction_of_wall": round(sum(eval_times) / wall, 4) if wall > 0 else None,
        "curve": curve,
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "time_to_val_2_0_s": next((p["elapsed_s"] for p in curve if p["val_loss"] <= 2.0), None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.curve_out:
        args.curve_out.write_text(json.dumps(curve, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
