"""The models and their config: model/gpt.py (GPT-2), model/track3.py (modded-nanogpt Track 3's
GPT), model/lm.py (what both share: the loss, the counts), model/config.py (GPTConfig,
torch-free). build_model picks one by model.arch.
`from model import GPT` imports torch; `from model.config import GPTConfig` does not."""
from model.config import GPTConfig

__all__ = ["GPT", "GPTConfig", "Track3GPT", "build_model"]


def build_model(cfg: GPTConfig):
    """GPT (arch=gpt2) or Track3GPT (arch=track3). The class is looked up on its module at call
    time, so a patched model.gpt.GPT (scripts/compare_published.py) is the one built."""
    if cfg.arch == "track3":
        from model import track3
        return track3.Track3GPT(cfg)
    from model import gpt
    return gpt.GPT(cfg)


def __getattr__(name):
    if name == "GPT":
        from model.gpt import GPT
        return GPT
    if name == "Track3GPT":
        from model.track3 import Track3GPT
        return Track3GPT
    raise AttributeError(name)
