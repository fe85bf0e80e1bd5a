"""Yardstick: a small character-level transformer with nanoGPT's shakespeare_char recipe for a CPU.

n_layer 4, n_head 4, n_embd 128, context 64, batch 12 random windows, AdamW peak lr 1e-3 betas (0.9, 0.99),
weight decay 0.1 on 2-D weights only, no dropout, grad clip 1.0; the learning rate warms up linearly over
100 steps, then decays on a cosine to a tenth of the peak over the run's expected length (--max-steps or
--minutes, whichever ends it first); pre-LN blocks, causal scaled_dot_product_attention, GELU MLP, tied
embeddings, learned positions, no biases (nanoGPT's bias=False).
During training, validation is estimated every --eval-interval steps (nanoGPT's 250) on a fixed random
subset of validation windows, sized at set-up so that it costs about --eval-share of the wall time
(charlstm's default schedule's share); `evaluate` is a full pass over the last 10% of the text in
non-overlapping 64-char windows. Set up as a harness method (benchmarks/harness.py).
Progress goes to stderr; one JSON object goes to stdout at the end.

    python benchmarks/gpt_baseline.py --minutes 10 --threads 2
    python benchmarks/gpt_baseline.py --quick      # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from benchutil import log, peak_rss_bytes
from harness import EVAL_SHARE, PRIME, TOP_K, Method, split_text, train_for
from torch import nn

from charlstm.data import bundled_text

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
PEAK_LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0
WARMUP_STEPS, MIN_LR_FRACTION = 100, 0.1


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

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


@torch.no_grad()
def mean_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, windows_per_forward: int = 256) -> float:
    """Mean loss (nats/char) over the windows (rows) of x and y."""
    model.eval()
    total = 0.0
    for i in range(0, len(x), windows_per_forward):
        total += model(x[i : i + windows_per_forward], y[i : i + windows_per_forward], reduction="sum").item()
    model.train()
    return total / y.numel()


def learning_rate(step: int, progress: float, warmup_end: float) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine to a tenth of the peak at the run's end;
    `progress` is the fraction of the run done, `warmup_end` the fraction done when warm-up ended."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / (WARMUP_STEPS + 1)
    ratio = min(1.0, max(0.0, (progress - warmup_end) / max(1e-9, 1 - warmup_end)))
    min_lr = PEAK_LR * MIN_LR_FRACTION
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (PEAK_LR - min_lr)


def subset_windows(model: GPT, train: torch.Tensor, val_x: torch.Tensor, eval_interval: int, share: float,
                   gen: torch.Generator) -> int:
    """How many validation windows cost about `share` of the wall time when scored every
    `eval_interval` steps: times a training step (forward and backward, no update) and scoring."""
    offsets = torch.arange(BLOCK)
    step_s, window_s = [], []
    for _ in range(3):
        ix = torch.randint(len(train) - BLOCK, (BATCH,), generator=gen)
        t0 = time.perf_counter()
        model(train[ix[:, None] + offsets], train[ix[:, None] + offsets + 1]).backward()
        step_s.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        probe = val_x[: min(len(val_x), 256)]
        t0 = time.perf_counter()
        mean_loss(model, probe, probe)
        window_s.append((time.perf_counter() - t0) / len(probe))
    cost = share / (1 - share) * eval_interval * statistics.median(step_s)
    return max(BATCH, min(len(val_x), round(cost / statistics.median(window_s))))


def setup(text: str, seed: int = 1, eval_interval: int = 250, eval_share: float = EVAL_SHARE,
          val_windows: int | None = None) -> Method:
    """The transformer on the text's first 90%, validated on the rest, as a harness method."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    chars, train_ids, val_ids = split_text(text)
    train, val = torch.from_numpy(train_ids), torch.from_numpy(val_ids)
    n = (len(val) - 1) // BLOCK  # every non-overlapping window: the full pass
    full_x, full_y = val[: n * BLOCK].view(n, BLOCK), val[1 : n * BLOCK + 1].view(n, BLOCK)
    model = GPT(len(chars), BLOCK, N_LAYER, N_HEAD, N_EMBD)
    params = list(model.parameters())  # the tied weight appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=PEAK_LR, betas=BETAS)
    windows = val_windows or subset_windows(model, train, full_x, eval_interval, eval_share, gen)
    # A fixed random subset of windows (random offsets, as nanoGPT's get_batch), drawn once.
    pick = torch.randint(len(val) - BLOCK - 1, (windows,), generator=torch.Generator().manual_seed(seed + 1))
    offsets = torch.arange(BLOCK)
    sub_x, sub_y = val[pick[:, None] + offsets], val[pick[:, None] + offsets + 1]
    done = {"steps": 0, "warmup_end": 0.0}

    def step(progress: float) -> torch.Tensor:
        if done["steps"] == WARMUP_STEPS:
            done["warmup_end"] = progress
        for group in opt.param_groups:
            group["lr"] = learning_rate(done["steps"], progress, done["warmup_end"])
        ix = torch.randint(len(train) - BLOCK, (BATCH,), generator=gen)
        loss = model(train[ix[:, None] + offsets], train[ix[:, None] + offsets + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        done["steps"] += 1
        return loss.detach()

    @torch.no_grad()
    def sample(length: int) -> str:
        model.eval()
        index = {ch: i for i, ch in enumerate(chars)}
        idx = torch.tensor([[index[c] for c in PRIME if c in index] or [0]])
        draw = torch.Generator().manual_seed(seed)
        for _ in range(length):
            top = model.logits(idx[:, -BLOCK:])[0, -1].topk(TOP_K)
            choice = torch.multinomial(F.softmax(top.values, dim=-1), 1, generator=draw)
            idx = torch.cat([idx, top.indices[choice].view(1, 1)], dim=1)
        model.train()
        return "".join(chars[i] for i in idx[0].tolist())

    config = {"impl": "nanoGPT-style char transformer", "vocab_size": len(chars), "n_layer": N_LAYER,
              "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK, "batch_size": BATCH, "lr": PEAK_LR,
              "min_lr": PEAK_LR * MIN_LR_FRACTION, "warmup_steps": WARMUP_STEPS, "lr_decay": "cosine",
              "betas": BETAS, "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP, "dropout": 0.0,
              "val_frac": 0.1, "eval_interval": eval_interval, "eval_share_target": eval_share,
              "val_subset_windows": windows, "val_full_windows": n, "seed": seed}
    return Method("gpt", step, lambda: mean_loss(model, full_x, full_y), sample, model, BATCH * BLOCK,
                  lambda: mean_loss(model, sub_x, sub_y), eval_interval, None, config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="UTF-8 text file (default: bundled Anna Karenina)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget incl. validation")
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-interval", type=int, default=250, help="estimate the val loss every N steps")
    ap.add_argument("--eval-share", type=float, default=EVAL_SHARE,
                    help="share of wall time the estimate should cost (sizes the subset)")
    ap.add_argument("--val-windows", type=int, help="windows in the subset (default: sized by --eval-share)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20k chars, 20 steps, estimate every 10, 1 thread unless --threads")
    args = ap.parse_args()
    if args.quick:
        args.threads = args.threads or 1
        args.max_steps, args.eval_interval = min(args.max_steps, 20), 10
    if args.threads:
        torch.set_num_threads(args.threads)
    text = args.data.read_text(encoding="utf-8") if args.data else bundled_text()
    if args.quick:
        text = text[:20_000]
    method = setup(text, args.seed, args.eval_interval, args.eval_share, args.val_windows)
    result: dict[str, Any] = {"config": {**method.config, "data": str(args.data or "bundled: Anna Karenina"),
                                         "text_chars": len(text), "params": method.params,
                                         "minutes": args.minutes, "max_steps": args.max_steps,
                                         "quick": args.quick, "threads": torch.get_num_threads()}}
    result.update(train_for(method, args.minutes * 60, args.max_steps, log))
    result["sample_head"] = method.sample(80)
    result["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
