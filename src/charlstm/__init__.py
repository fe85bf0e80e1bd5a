"""charlstm: character-level LSTM/GRU/RNN language models, trained on any text."""

__version__ = "0.1.0"

from pathlib import Path
from typing import Any

from .api import CharModel, load, train
from .errors import CharLSTMError
from .trainer import Hooks


def serve(model: "CharModel | str | Path", host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve a model (or a checkpoint or run folder) over OpenAI-compatible HTTP until SIGTERM or
    Ctrl-C; `options` are those of `charlstm.server.serve`. Needs the [serve] extra; docs/serving.md."""
    try:
        from .server import serve as run_server  # lazy: FastAPI and uvicorn are an optional extra
    except ImportError as exc:
        raise CharLSTMError(
            f"serving needs the [serve] extra ({exc.name} is missing): pip install 'charlstm[serve]'"
        ) from exc
    run_server(model if isinstance(model, CharModel) else load(model), host, port, **options)


__all__ = ["CharLSTMError", "CharModel", "Hooks", "__version__", "load", "serve", "train"]
