"""One character per stream per call, as plain matrix products.

Sampling feeds one character at a time; a call of `nn.LSTM` on a length-1 sequence spends
most of its time in per-call overhead. The same cell written out as a few `addmm`s is several
times faster on a CPU, and the first layer's input product is a table lookup (the embedding
times the input weights, computed once). `step` must equal `CharRNN.forward` on one step.
"""

from __future__ import annotations

import torch

from .model import CharRNN, State


class Stepper:
    def __init__(self, model: CharRNN) -> None:
        config, rnn = model.config, model.rnn
        self.cell, self.num_layers = config.cell, config.num_layers
        with torch.no_grad():
            self.w_ih = [
                getattr(rnn, f"weight_ih_l{k}").detach().t().contiguous() for k in range(config.num_layers)
            ]
            self.w_hh = [
                getattr(rnn, f"weight_hh_l{k}").detach().t().contiguous() for k in range(config.num_layers)
            ]
            self.b_ih = [getattr(rnn, f"bias_ih_l{k}").detach() for k in range(config.num_layers)]
            self.b_hh = [getattr(rnn, f"bias_hh_l{k}").detach() for k in range(config.num_layers)]
            # (V, G): the first layer's input product for every character at once.
            self.input_table = torch.addmm(self.b_ih[0], model.embedding.weight.detach(), self.w_ih[0])
            self.head_w = model.head.weight.detach().t().contiguous()
            self.head_b = model.head.bias.detach()

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (N,) and the state after the previous character -> logits (N, V), new state."""
        lstm = self.cell == "lstm"
        h_all, c_all = state if lstm else (state, None)  # type: ignore[misc]
        new_h, new_c = [], []
        x = None
        for k in range(self.num_layers):
            h = h_all[k]
            gates_x = self.input_table[ids] if k == 0 else torch.addmm(self.b_ih[k], x, self.w_ih[k])
            if self.cell == "gru":
                gates_h = torch.addmm(self.b_hh[k], h, self.w_hh[k])
                r_x, z_x, n_x = gates_x.chunk(3, dim=1)
                r_h, z_h, n_h = gates_h.chunk(3, dim=1)
                r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
                n = torch.tanh(n_x + r * n_h)
                h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            else:
                gates = torch.addmm(gates_x + self.b_hh[k], h, self.w_hh[k])
                if lstm:
                    i, f, g, o = gates.chunk(4, dim=1)
                    c = torch.sigmoid(f) * c_all[k] + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    new_c.append(c)
                else:
                    h = torch.tanh(gates)
            new_h.append(h)
            x = h
        logits = torch.addmm(self.head_b, x, self.head_w)
        h_stack = torch.stack(new_h)
        return logits, ((h_stack, torch.stack(new_c)) if lstm else h_stack)
