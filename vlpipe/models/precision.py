"""Which number format a model runs in, chosen from what the hardware does natively.

bf16 halves memory traffic and, on CPUs with native bf16 instructions (AVX512-BF16, AMX), runs
vlpipe-mini about 1.6x faster at the same retrieval and caption quality (docs/precision.md). On CPUs
without them PyTorch emulates bf16 and it is slower than fp32, so `auto` must detect, not assume.
torch is imported inside the functions: the driver resolves a precision without loading it twice.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

__all__ = [
    "BF16_MEASURED_HUB_EMBEDDERS",
    "NATIVE_BF16_FLAGS",
    "PRECISIONS",
    "Precision",
    "native_bf16_flags",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: hub embedder families (config model_type) whose CPU bf16 accuracy was measured
#: (docs/precision.md): `auto` may pick bf16 for them; other hub models stay fp32 on CPU
BF16_MEASURED_HUB_EMBEDDERS = ("clip", "siglip")
#: /proc/cpuinfo flags that mean bf16 matrix maths runs natively
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved choice and the reason given to the user (printed, kept in the manifest)."""

    name: str  # fp32 | fp16 | bf16
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


@functools.lru_cache(maxsize=1)
def native_bf16_flags() -> tuple[str, ...]:
    """The CPU's native-bf16 features; empty where it has none or cannot tell (then fp32)."""
    found = set(_cpuinfo_flags()) & set(NATIVE_BF16_FLAGS)
    try:
        import torch.cpu

        if torch.cpu._is_avx512_bf16_supported():
            found.add("avx512_bf16")
        if torch.cpu._is_amx_tile_supported():
            found.add("amx_bf16")
    except (ImportError, AttributeError):  # an older torch without the private probes
        pass
    return tuple(sorted(found))


def _cpuinfo_flags() -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def resolve_precision(
    device_type: str,
    requested: str = "auto",
    cpu_bf16: tuple[str, ...] | None = None,
    bf16_measured: bool = True,
) -> Precision:
    """`auto`: fp16 on GPU; on CPU bf16 where it is native, else fp32. `cpu_bf16` overrides the
    detected CPU features (tests simulate a CPU without them). `bf16_measured=False` keeps a
    model whose CPU bf16 speed and quality were not measured (hub models) in fp32 under auto."""
    from vlpipe.errors import VlpipeError

    if requested not in PRECISIONS:
        raise VlpipeError(f"unknown precision {requested!r}: use {', '.join(PRECISIONS)}")
    flags = native_bf16_flags() if cpu_bf16 is None else cpu_bf16
    if requested != "auto":
        slow = device_type == "cpu" and requested in ("bf16", "fp16") and not flags
        why = "asked for; this CPU has no native bf16, so it runs slower than fp32" if slow else ""
        return Precision(requested, why or "asked for")
    if device_type == "cuda":
        return Precision("fp16", "auto: GPU")
    if flags and not bf16_measured:
        return Precision("fp32", "auto: hub models run fp32 on CPU (bf16 not measured for them)")
    if flags:
        return Precision("bf16", f"auto: this CPU has native bf16 ({', '.join(flags)})")
    return Precision("fp32", "auto: this CPU has no native bf16")
