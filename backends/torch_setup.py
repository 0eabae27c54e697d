"""Where the torch learner runs and in what precision: device, dtype of the frozen base,
4-bit QLoRA. Pure choices from the machine and the config, unit-tested on any machine."""

from __future__ import annotations

import torch

from saie_lite.errors import UserError


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_quantize(requested: str, device: str) -> bool:
    """QLoRA needs bitsandbytes kernels, which only CUDA has; bitsandbytes comes with the
    ``cuda`` extra. ``auto`` uses it when both are there, else plain LoRA."""
    import importlib.util

    if requested == "none":
        return False
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if requested == "4bit":
        if device != "cuda":
            raise UserError(
                f"learner.quantize=4bit (QLoRA) needs a CUDA GPU, this run is on {device}: "
                "use --set learner.quantize=none"
            )
        if not have_bnb:
            raise UserError(
                "learner.quantize=4bit (QLoRA) needs bitsandbytes: pip install 'saie-lite[cuda]'"
            )
        return True
    return device == "cuda" and have_bnb


def hide_bitsandbytes() -> None:
    """A run without QLoRA never needs bitsandbytes, but peft imports it whenever it is
    installed, and on a machine without CUDA it then warns about missing kernels at every
    start. A ``None`` entry in ``sys.modules`` makes it look absent to peft and
    transformers (``find_spec`` answers None) for this process."""
    import sys

    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


def resolve_dtype(requested: str, device: str, cpu_bf16: bool | None = None) -> torch.dtype:
    """``auto``: the fastest precision the hardware has for the frozen base (adapters
    stay float32 either way): bf16 on CUDA GPUs; on a CPU, whichever a measured matmul
    probe finds faster, or once the learner's first update has checked that on this
    machine, whichever the update found faster (``cpu_dtype``); float32 elsewhere."""
    if requested != "auto":
        return getattr(torch, requested)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu":
        from saie_lite.backends.cpu_dtype import cpu_prefers_bf16

        if cpu_prefers_bf16() if cpu_bf16 is None else cpu_bf16:
            return torch.bfloat16
    return torch.float32


def quantization_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
