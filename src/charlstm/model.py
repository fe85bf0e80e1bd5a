"""CharRNN: Embedding -> LSTM | GRU | RNN -> Dropout -> Linear, with the recurrent state explicit."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig

# nn.LSTM carries (h, c); nn.GRU and nn.RNN carry h alone. Each is (num_layers, B, hidden_size).
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    """A character-level language model.

    The tutorial feeds one-hot vectors to the LSTM (`embedding_size=0` here). By default a learned
    embedding is looked up instead: the same kind of product (a row per character) without a
    (B, T, V) one-hot tensor, and a larger input signal at initialisation, which learns faster.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = None if config.one_hot else nn.Embedding(config.vocab_size, config.input_size)
        self.rnn = _CELLS[config.cell](
            config.input_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) int64 -> logits (B, T, V) and the state after the last step."""
        x = self.input_vectors(idx)  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.dropout(out)), state

    def input_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (..., ) -> the vectors fed to the first recurrent layer (..., E)."""
        if self.embedding is None:
            return nn.functional.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)
        return self.embedding(idx)

    def input_table(self) -> torch.Tensor:
        """(V, E): the input vector of every character (the identity for one-hot input)."""
        if self.embedding is None:
            weight = self.head.weight
            return torch.eye(self.config.vocab_size, device=weight.device, dtype=weight.dtype)
        return self.embedding.weight.detach()

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.head.weight.device
        zeros = torch.zeros(shape, device=device, dtype=self.head.weight.dtype)
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph between windows (truncated BPTT) while keeping the values."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()
