"""The GPT-2 model (model/gpt.py) and its config (model/config.py, torch-free).
`from model import GPT` imports torch; `from model.config import GPTConfig` does not."""
from model.config import GPTConfig

__all__ = ["GPT", "GPTConfig"]


def __getattr__(name):
    if name == "GPT":
        from model.gpt import GPT
        return GPT
    raise AttributeError(name)
