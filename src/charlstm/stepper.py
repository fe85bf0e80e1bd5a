"""One character per stream per call, as plain matrix products.

Sampling feeds one character at a time; a call of `nn.LSTM` on a length-1 sequence spends
most of its time in per-call overhead. The same cell written out as one `addmm` per layer and a
few pointwise ops is several times faster on a CPU: the first layer's input product is a table
lookup (the embedding times the input weights, computed once), and a deeper layer multiplies
`[x, h]` by its stacked input and hidden weights in one product. `step` must equal
`CharRNN.forward` on one step.
"""

from __future__ import annotations

import torch

from .model import CharRNN, State


class Stepper:
    def __init__(self, model: CharRNN) -> None:
        config, rnn = model.config, model.rnn
        self.cell, self.num_layers, self.hidden_size = config.cell, config.num_layers, config.hidden_size
        layers = range(config.num_layers)
        with torch.no_grad():
            w_ih = [getattr(rnn, f"weight_ih_l{k}").detach().t() for k in layers]  # (in, G)
            w_hh = [getattr(rnn, f"weight_hh_l{k}").detach().t() for k in layers]  # (H, G)
            b_ih = [getattr(rnn, f"bias_ih_l{k}").detach() for k in layers]
            b_hh = [getattr(rnn, f"bias_hh_l{k}").detach() for k in layers]
            embedded = model.input_table()
            if self.cell == "gru":
                # r and z add both products, but n scales the hidden one by r: keep them apart.
                self.input_table = torch.addmm(b_ih[0], embedded, w_ih[0])  # (V, G)
                self.w_ih = [w.contiguous() for w in w_ih]
                self.w_hh = [w.contiguous() for w in w_hh]
                self.b_ih, self.b_hh = b_ih, b_hh
            else:
                # Both products only ever add: one bias, one (in + H, G) weight per layer.
                self.input_table = torch.addmm(b_ih[0] + b_hh[0], embedded, w_ih[0])  # (V, G)
                self.w_stacked = [w_hh[0].contiguous()] + [
                    torch.cat([w_ih[k], w_hh[k]]).contiguous() for k in layers if k
                ]
                self.bias = [b_ih[k] + b_hh[k] for k in layers]
            self.head_w = model.head.weight.detach().t().contiguous()
            self.head_b = model.head.bias.detach()

    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (N,) and the state after the previous character -> logits (N, V), new state.
        (The weights are detached, so no graph is recorded even outside `inference_mode`.)"""
        lstm = self.cell == "lstm"
        h_all, c_all = state if lstm else (state, None)  # type: ignore[misc]
        new_h, new_c = [], []
        x = h_all[0]  # replaced by each layer's output
        for k in range(self.num_layers):
            h = h_all[k]
            if self.cell == "gru":
                h = self._gru(k, ids, x, h)
            else:
                if k == 0:
                    gates = torch.addmm(self.input_table[ids], h, self.w_stacked[0])
                else:
                    gates = torch.addmm(self.bias[k], torch.cat([x, h], dim=1), self.w_stacked[k])
                if lstm:
                    h, c = self._lstm(gates, c_all[k])
                    new_c.append(c)
                else:
                    h = gates.tanh_()
            new_h.append(h)
            x = h
        logits = torch.addmm(self.head_b, x, self.head_w)
        h_stack = torch.stack(new_h)
        return logits, ((h_stack, torch.stack(new_c)) if lstm else h_stack)

    def _lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.hidden_size
        squashed = gates.sigmoid()  # i, f, (g: unused), o in one call
        g = gates[:, 2 * size : 3 * size].tanh()
        c = torch.addcmul(squashed[:, size : 2 * size] * c, squashed[:, :size], g)
        return squashed[:, 3 * size :] * c.tanh(), c

    def _gru(self, k: int, ids: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gates_x = self.input_table[ids] if k == 0 else torch.addmm(self.b_ih[k], x, self.w_ih[k])
        gates_h = torch.addmm(self.b_hh[k], h, self.w_hh[k])
        r_x, z_x, n_x = gates_x.chunk(3, dim=1)
        r_h, z_h, n_h = gates_h.chunk(3, dim=1)
        r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        return torch.lerp(n, h, z)  # (1 - z) * n + z * h
