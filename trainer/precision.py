"""What a run computes in: `dtype=auto` and `compile=auto` (the defaults) resolved by the device
the run got, in one place (train.py's run(), scripts/compare_nanogpt.py).

  - CUDA with native bf16 (Ampere and later): bf16 autocast and torch.compile, nanoGPT's GPU
    setting (fp32 eager runs GPT-2 at about half its speed);
  - CUDA without native bf16 (Volta, Turing): float16 autocast, which train.py pairs with a
    GradScaler (nanoGPT does the same), and torch.compile;
  - CPU: float32 and eager, the defaults before `auto` existed, so CPU runs are unchanged.
An explicit dtype= or compile= always wins. decide() is the pure rule (tests feed it mocked
capabilities); resolve_precision() applies it to this process's device. The names of the values
(DTYPES, COMPILE) and the checks of a config's request live in trainer/config.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from configs.errors import UserError


@dataclass(frozen=True)
class Precision:
    dtype: str        # float32 | bfloat16 | float16: the autocast dtype (float32: none)
    compile: bool     # torch.compile the model
    reason: str       # what each resolved to and why, for the start-up line

    def line(self) -> str:
        return f"precision: {self.reason}"


def cuda_bf16() -> bool:
    """Whether the current CUDA device has native bf16 (compute capability 8.0 and later). torch's
    default check also counts emulated bf16, which runs a V100 or T4 slower than float16."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:   # a torch whose check has no including_emulation (it counted native only)
        return bool(torch.cuda.is_bf16_supported())


def decide(device_type: str, bf16: bool, dtype: str = "auto", compile: str = "auto") -> Precision:
    """The rule. `dtype` and `compile` are the config's checked values (trainer/config.py:
    compile is auto, true or false); `bf16`: the CUDA device has native bf16."""
    cuda = device_type == "cuda"
    if dtype == "auto":
        if cuda:
            dtype, why = ("bfloat16", "CUDA with bf16") if bf16 else ("float16", "CUDA without bf16")
        else:
            why = "CPU" if device_type == "cpu" else f"device {device_type}"
            dtype = "float32"
        dtype_words = f"dtype=auto -> {dtype} ({why})"
    else:
        dtype_words = f"dtype={dtype} (set)"
    if dtype == "float16" and not cuda:
        raise UserError("dtype=float16 needs CUDA; use dtype=bfloat16 or float32 on CPU")
    if compile == "auto":
        on = cuda
        compile_words = f"compile=auto -> {str(on).lower()} ({'CUDA' if cuda else 'not CUDA'})"
    else:
        on = compile == "true"
        compile_words = f"compile={compile} (set)"
    return Precision(dtype, on, f"{dtype_words}, {compile_words}")


def resolve_precision(device: str, dtype: str = "auto", compile: str = "auto") -> Precision:
    """decide() for `device` ("cpu", "cuda", "cuda:N"; CUDA's bf16 read only where it matters)."""
    device_type = torch.device(device).type
    bf16 = device_type == "cuda" and dtype == "auto" and cuda_bf16()
    return decide(device_type, bf16, dtype, compile)
