"""One step of a model as an ONNX graph, so it runs anywhere onnxruntime does, without PyTorch.

The graph is built node by node from the weights with `onnx.helper` (no tracing, so neither
torch.onnx nor onnxscript is needed) and follows `stepper.Stepper`: the first layer's input
product is a lookup in a precomputed (V, G) table, each layer is a couple of MatMuls and the
cell's pointwise ops. Inputs and outputs, B dynamic, L layers of H units, V characters:

    ids     int64   (B,)          the current character of each stream
    h       float32 (L, B, H)     hidden state after the previous character (zeros to start)
    c       float32 (L, B, H)     LSTM only: cell state, likewise
    ->
    logits  float32 (B, V)        scores for the next character
    h_next  float32 (L, B, H)     feed back as h
    c_next  float32 (L, B, H)     LSTM only: feed back as c

The state is stacked per kind (as in nn.LSTM) so a numpy caller keeps one array per name.
The vocabulary and the model's facts travel as JSON in the metadata under "charlstm", and the
same JSON is written as `vocab.json` beside the .onnx file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import CharModel, load
from .errors import CharLSTMError

FORMATS = ("onnx",)
OPSET = 17
IR_VERSION = 8  # what OPSET needs; a newer IR would shut out older onnxruntime releases
METADATA_KEY = "charlstm"
VOCAB_FILE = "vocab.json"
INSTALL_HINT = "pip install 'charlstm[export]'"


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise CharLSTMError(f"unsupported export format {format!r}; supported: {', '.join(FORMATS)}")


def state_names(cell: str) -> list[str]:
    return ["h", "c"] if cell == "lstm" else ["h"]


def export_onnx(
    model_or_checkpoint: CharModel | str | Path, path: str | Path, overwrite: bool = False
) -> Path:
    """Write one step of the model to `path` (ONNX) and `vocab.json` beside it; returns `path`.

    `model_or_checkpoint` is a loaded `CharModel`, or a checkpoint or run folder. An existing
    `path` (or a different `vocab.json` beside it) is replaced only with `overwrite=True`.
    Both files are written under temporary names and renamed, so a failure leaves neither half-done.
    """
    onnx = _import_onnx()
    path = Path(path)
    if path.is_dir():
        raise CharLSTMError(f"{path}: is a folder; give the .onnx file to write, e.g. {path / 'model.onnx'}")
    if path.exists() and not overwrite:
        raise CharLSTMError(f"{path}: exists; pass --overwrite to replace it")
    model = model_or_checkpoint if isinstance(model_or_checkpoint, CharModel) else load(model_or_checkpoint)
    facts = model_facts(model)
    facts_json = json.dumps(facts, ensure_ascii=False, indent=2)
    vocab_path = path.parent / VOCAB_FILE
    if vocab_path.exists() and not overwrite and _read_bytes(vocab_path) != facts_json.encode("utf-8"):
        raise CharLSTMError(
            f"{vocab_path}: exists and describes another model; pass --overwrite or export to another folder"
        )
    graph = build_graph(model)
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="charlstm",
        ir_version=IR_VERSION,
    )
    onnx.helper.set_model_props(proto, {METADATA_KEY: facts_json})
    if proto.ByteSize() >= 2**31:  # protobuf's limit; past it ONNX needs external data files
        raise CharLSTMError(f"the model is {proto.ByteSize():,} bytes, over ONNX's 2 GB limit for one file")
    onnx.checker.check_model(proto)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CharLSTMError(f"{path.parent}: cannot create the folder ({exc.strerror or exc})") from None
    _write_files_atomically({path: proto.SerializeToString(), vocab_path: facts_json.encode("utf-8")})
    return path


def model_facts(model: CharModel) -> dict[str, Any]:
    """What a caller needs to drive the graph: vocabulary, sizes, names, and how it was trained."""
    config = model.config
    names = state_names(config.cell)
    return {
        "format": "charlstm-onnx-step",
        "format_version": 1,
        "vocab": list(model.vocab.chars),
        "model": config.to_dict(),
        "inputs": ["ids", *names],
        "outputs": ["logits", *(f"{name}_next" for name in names)],
        "state_shape": ["num_layers", "batch", "hidden_size"],
        "training": model.training,
    }


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise CharLSTMError(f"export needs the onnx package; install it with: {INSTALL_HINT}") from None
    return onnx


def _write_files_atomically(files: dict[Path, bytes]) -> None:
    """Stage every file beside its target, then rename them all: a failure while writing (a full
    disk, a read-only folder) leaves none of them, and the old files stay as they were."""
    staged = {path: path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in files}
    try:
        for path, content in files.items():
            with open(staged[path], "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except OSError as exc:
        where = exc.filename or next(iter(files))
        raise CharLSTMError(f"{where}: could not write the export ({exc.strerror or exc})") from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


class _GraphBuilder:
    """Collects nodes and initializers; each op returns the name of its (single) output."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any) -> Any:
        self.count += 1
        names = [f"{kind.lower()}_{self.count}_{i}" for i in range(outputs)]
        if name is not None:
            names = [name]
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def linear(self, x: str, weight: str, bias: str | None) -> str:
        product = self.op("MatMul", x, weight)
        return self.op("Add", product, bias) if bias else product

    def split(self, x: str, sizes: str, parts: int) -> list[str]:
        return self.op("Split", x, sizes, outputs=parts, axis=1)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


@torch.no_grad()
def build_graph(model: CharModel) -> Any:
    """The ONNX graph of one step (see the module docstring for its inputs and outputs)."""
    onnx = _import_onnx()
    net, config = model.model, model.config
    rnn, cell, hidden, layers = net.rnn, config.cell, config.hidden_size, config.num_layers
    g = _GraphBuilder(onnx)
    parts = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    sizes = g.const("gate_sizes", np.full(parts, hidden, dtype=np.int64)) if parts > 1 else ""
    weights = {name: _array(p) for name, p in rnn.named_parameters()}
    # GRU keeps the input bias out of the hidden product (n scales only the latter by r); the
    # others only ever add the two, so one bias goes into the table and the layer's product.
    fused = cell != "gru"
    table_bias = weights["bias_ih_l0"] + (weights["bias_hh_l0"] if fused else 0)
    table = _array(net.embedding.weight) @ weights["weight_ih_l0"].T + table_bias  # (V, G)
    g.const("input_table", table.astype(np.float32))
    h_in = "h"
    c_in = "c" if cell == "lstm" else None
    new_h, new_c = [], []
    x = ""
    for k in range(layers):
        index = g.const(f"layer_{k}", np.array(k, dtype=np.int64))
        h = g.op("Gather", h_in, index, axis=0)  # (B, H)
        w_hh = g.const(f"w_hh_{k}", weights[f"weight_hh_l{k}"].T.copy())  # (H, G)
        if k == 0:
            gates_x = g.op("Gather", "input_table", "ids", axis=0)  # (B, G)
        else:
            w_ih = g.const(f"w_ih_{k}", weights[f"weight_ih_l{k}"].T.copy())
            bias_x = weights[f"bias_ih_l{k}"] + (weights[f"bias_hh_l{k}"] if fused else 0)
            gates_x = g.linear(x, w_ih, g.const(f"b_x_{k}", bias_x.astype(np.float32)))
        if cell == "gru":
            gates_h = g.linear(h, w_hh, g.const(f"b_hh_{k}", weights[f"bias_hh_l{k}"]))
            r_x, z_x, n_x = g.split(gates_x, sizes, 3)
            r_h, z_h, n_h = g.split(gates_h, sizes, 3)
            r = g.op("Sigmoid", g.op("Add", r_x, r_h))
            z = g.op("Sigmoid", g.op("Add", z_x, z_h))
            n = g.op("Tanh", g.op("Add", n_x, g.op("Mul", r, n_h)))
            h = g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))  # (1 - z) * n + z * h
        else:
            gates = g.op("Add", gates_x, g.linear(h, w_hh, None))  # (B, G)
            if cell == "lstm":
                c = g.op("Gather", c_in, index, axis=0)
                i, f, cand, o = g.split(gates, sizes, 4)
                i, f, o, cand = g.op("Sigmoid", i), g.op("Sigmoid", f), g.op("Sigmoid", o), g.op("Tanh", cand)
                c = g.op("Add", g.op("Mul", f, c), g.op("Mul", i, cand))
                h = g.op("Mul", o, g.op("Tanh", c))
                new_c.append(g.op("Unsqueeze", c, "axis_0"))
            else:
                h = g.op("Tanh", gates)  # nn.RNN's default nonlinearity, the one CharRNN builds
        new_h.append(g.op("Unsqueeze", h, "axis_0"))
        x = h
    g.const("axis_0", np.array([0], dtype=np.int64))
    head_w = g.const("head_weight", _array(net.head.weight).T.copy())  # (H, V)
    g.op("Add", g.op("MatMul", x, head_w), g.const("head_bias", _array(net.head.bias)), name="logits")
    g.op("Concat", *new_h, name="h_next", axis=0)
    if cell == "lstm":
        g.op("Concat", *new_c, name="c_next", axis=0)

    def tensor(name: str, dtype: int, shape: list[Any]) -> Any:
        return onnx.helper.make_tensor_value_info(name, dtype, shape)

    state_shape = [layers, "batch", hidden]
    float32 = onnx.TensorProto.FLOAT
    names = state_names(cell)
    inputs = [tensor("ids", onnx.TensorProto.INT64, ["batch"])]
    inputs += [tensor(name, float32, state_shape) for name in names]
    outputs = [tensor("logits", float32, ["batch", config.vocab_size])]
    outputs += [tensor(f"{name}_next", float32, state_shape) for name in names]
    return onnx.helper.make_graph(g.nodes, f"charlstm_{cell}_step", inputs, outputs, g.initializers)
