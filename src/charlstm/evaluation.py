"""One evaluator: the loss of a model on a text, used for validation during training and by
`charlstm eval` / `CharModel.evaluate`, so that both give the same number for the same text.

Every character after the first is predicted from the ones before it. The text is cut into
`streams` contiguous rows walked in windows of `window` characters with the state carried
across windows (truncated BPTT's layout, so validation sees the context training did); each row
starts from an empty state. Under data parallelism each rank scores every `world_size`-th row
and the sums are added up.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch.nn import functional as F

from .distributed import DistContext
from .errors import CharLSTMError
from .model import CharRNN

IGNORE = -100


class HeldOut:
    """A text laid out for scoring: (B, W) windows over `streams` rows of its ids."""

    def __init__(
        self,
        ids: np.ndarray | torch.Tensor,
        streams: int,
        window: int,
        device: torch.device | str = "cpu",
        dist: DistContext | None = None,
    ) -> None:
        dist = dist or DistContext()
        self.pairs = len(ids) - 1  # characters scored: each one after the first
        if self.pairs < 1:
            raise CharLSTMError("the text needs at least 2 characters the model knows to be scored")
        rows = max(1, min(streams, self.pairs // window))
        if rows < dist.world_size:
            raise CharLSTMError(
                f"validation text too short to share among {dist.world_size} processes "
                f"({len(ids):,} characters); raise --val-frac or use a longer --val-file"
            )
        self.width = math.ceil(self.pairs / rows)
        self.window = window
        self.dist = dist
        self.streams = streams
        ids = ids if isinstance(ids, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ids))
        self.ids = ids.to(device)
        self.row_starts = torch.arange(dist.rank, rows, dist.world_size, device=device) * self.width
        self.columns = torch.arange(window, device=device)

    def head(self, share: float) -> HeldOut:
        """The first `share` of the text laid out the same way; the whole of it when that part
        would not give every stream at least two windows."""
        chars = math.ceil(share * len(self.ids))
        if chars < 2 * self.streams * self.window:
            return self
        return HeldOut(self.ids[:chars], self.streams, self.window, self.ids.device, self.dist)

    def __len__(self) -> int:
        return math.ceil(self.width / self.window)

    def window_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, W) and targets (B, W); past a row's end the target is IGNORE."""
        columns = index * self.window + self.columns
        positions = self.row_starts[:, None] + columns[None, :]
        valid = (columns < self.width)[None, :] & (positions < self.pairs)
        positions = positions.clamp(max=self.pairs - 1)
        inputs = self.ids[positions].long()
        targets = self.ids[positions + 1].long().masked_fill(~valid, IGNORE)
        return inputs, targets

    @torch.no_grad()
    def score(
        self, model: CharRNN, autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    ) -> tuple[float, int]:
        """(total nats, characters) over the whole text, summed over every rank."""
        model.eval()
        device = self.ids.device
        totals = torch.zeros(2, device=device, dtype=torch.float64)  # (nats, chars)
        state = None
        for index in range(len(self)):
            inputs, targets = self.window_at(index)
            with autocast():
                logits, state = model(inputs, state)
            totals[0] += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            totals[1] += (targets != IGNORE).sum()
        nats, chars = self.dist.all_reduce(totals).tolist()
        return nats, int(chars)

    def loss(
        self, model: CharRNN, autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    ) -> float:
        """Mean loss in nats per character."""
        nats, chars = self.score(model, autocast)
        return nats / chars
