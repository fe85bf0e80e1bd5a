"""charlstm: character-level LSTM/GRU/RNN language models, trained on any text."""

__version__ = "0.1.0"

from .api import CharModel, load, train
from .errors import CharLSTMError
from .trainer import Hooks

__all__ = ["CharLSTMError", "CharModel", "Hooks", "__version__", "load", "train"]
