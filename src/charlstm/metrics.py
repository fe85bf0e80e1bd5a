"""Metrics: one JSON object per evaluation in `metrics.jsonl`, and a one-line console summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

LN2 = math.log(2)


def bits_per_char(loss_nats: float) -> float:
    return loss_nats / LN2


def score(total_nats: float, num_chars: int) -> dict[str, float]:
    """Loss, bits per character and perplexity of `num_chars` characters costing `total_nats`."""
    loss = total_nats / num_chars
    return {"loss": loss, "bpc": bits_per_char(loss), "perplexity": math.exp(loss)}


class MetricsLog:
    """Appends records to a JSONL file, flushing each so a crash loses at most the last line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log with `records` (a resumed run drops lines written after its checkpoint)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())  # the new log is on disk before it replaces the old one
        tmp.replace(self.path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def format_record(record: dict[str, Any]) -> str:
    # an early validation scores only the first part of the held-out text
    part = f" on {record['val_chars']:,} chars" if "val_chars" in record else ""
    return (
        f"step {record['step']:>6}  epoch {record['epoch']:.2f}  train {record['train_loss']:.4f}  "
        f"val {record['val_loss']:.4f} ({record['val_bpc']:.3f} bpc{part})  "
        f"{record['chars_per_sec']:,.0f} chars/s  {record['elapsed_s']:.0f}s"
    )
