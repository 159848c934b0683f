"""What this machine's matmuls are fast in: the decision behind `optimizer.ns_dtype=auto`.

Newton-Schulz is nothing but matmuls, and bf16 is accurate enough for it (Muon's choice), so
`auto` means bfloat16 wherever bf16 matmuls run natively and float32 elsewhere:
  - CUDA: tensor cores, bf16 is several times faster than float32;
  - a CPU with native bf16 dot products (x86 AMX-BF16 or AVX512-BF16): oneDNN's bf16 GEMM beats
    float32 (2.5x in the Muon step on a 2-core AMD EPYC with avx512_bf16);
  - any other CPU: bf16 matmuls are emulated, 20-30x slower than float32 (a 128 x 512 x 128
    product: 9.7 ms vs 0.36 ms on a CPU without avx512_bf16), so float32.
The decision reads CPU flags (/proc/cpuinfo), never a timing: the same machine always makes the
same choice, so a run repeats bit for bit. decide() is the pure rule (tests feed it mocked
capabilities); ns_auto() applies it to this process's machine, once per device type.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# x86 CPU flags (Linux names) of native bf16 dot products, best first, and how to say them
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Choice:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first /proc/cpuinfo line starting with one of `keys`, after its colon; "" when no
    line has it, None where the file cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(keys):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them (x86 `flags`, arm64 `Features`), None where
    they cannot be read."""
    line = _cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if line is None else frozenset(line.split())


def mkldnn_bf16() -> bool:
    """Whether this torch build runs CPU bf16 matmuls through oneDNN (without it even a native
    bf16 CPU gets torch's slow reference kernel)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # an older or newer torch without the check
        return True


def decide(device_type: str, flags: frozenset[str] | None, onednn_bf16: bool = True,
           cpu_capability: str = "") -> Choice:
    """The rule: bf16 on CUDA and on CPUs with native bf16 matmuls, float32 elsewhere."""
    if device_type == "cuda":
        return Choice(torch.bfloat16, "CUDA: tensor-core bf16 matmuls")
    isa = f", torch CPU capability {cpu_capability}" if cpu_capability else ""
    if device_type != "cpu":
        return Choice(torch.float32, f"device {device_type}: bf16 speed unknown, float32")
    if flags is None:
        return Choice(torch.float32, f"CPU flags unreadable on this OS: assumed no native bf16{isa}")
    native = [label for flag, label in NATIVE_BF16_FLAGS.items() if flag in flags]
    if native and onednn_bf16:
        return Choice(torch.bfloat16, f"CPU has {' and '.join(native)}: native bf16 matmuls{isa}")
    if native:
        return Choice(torch.float32, f"CPU has {native[0]} but this torch build has no oneDNN "
                                     f"bf16 matmuls{isa}")
    return Choice(torch.float32, f"CPU without AVX512-BF16/AMX: bf16 matmuls emulated, 20-30x "
                                 f"slower than float32{isa}")


@functools.lru_cache(maxsize=None)
def ns_auto(device_type: str) -> Choice:
    """decide() for this process's machine (read once per device type)."""
    if device_type != "cpu":
        return decide(device_type, None)
    return decide("cpu", cpu_flags(), mkldnn_bf16(), torch.backends.cpu.get_cpu_capability())


def describe(device_type: str = "cpu") -> str:
    """One line on this machine's matmul capability, for benchmarks' headers."""
    choice = ns_auto(device_type)
    what = (torch.cuda.get_device_name() if device_type == "cuda"
            else _cpuinfo_field(("model name",)) or platform.processor() or platform.machine())
    return f"{what}: ns_dtype=auto -> {choice.name} ({choice.reason})"
