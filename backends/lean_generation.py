"""Generation-only shortcuts for the torch learner (tests/test_generation_speed.py):

- ``contiguous_head``: at prefill transformers slices the last position out of the
  hidden states (``hidden[:, -1:, :]``), a strided view. torch multiplies a strided 3D
  input by the output head as a batched matmul with the head's weight copied once per
  row: for a 49k-token vocabulary in bf16 that is 450 MB copied and ~0.4 s per call on
  a 2-core CPU, against ~6 ms for the same product from a contiguous copy. The two are
  different kernels, so a logit may differ in its last bit (measured: equal in bf16,
  within 3e-5 in float32); greedy answers are compared in the tests.
- ``fused_adapter``: PEFT's LoRA forward adds the adapter's output as
  ``result + lora_B(lora_A(x)) * scaling``, two full-size float32 temporaries per layer;
  scaling and adding in place into the one ``lora_B`` already made is the same float
  operations in the same order (IEEE addition commutes), so the same bits, with less
  memory traffic. It matters where the adapter cannot be merged (a bf16 base), at
  prefill, where each temporary is prompt tokens x layer width.
- ``merged_weight``: the same in-place order for a merge (float32), one new weight-sized
  tensor per layer instead of three, bit for bit PEFT's merge, on every ``generate``
  call that merges.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType

import torch

ADAPTER = "default"  # the one adapter TorchLearner trains


@contextmanager
def contiguous_head(head: torch.nn.Module):
    """Inside the block, ``head`` reads a contiguous copy of a strided input."""

    def contiguous(_module, args):
        if not args or args[0].is_contiguous():
            return None
        return (args[0].contiguous(), *args[1:])

    hook = head.register_forward_pre_hook(contiguous)
    try:
        yield
    finally:
        hook.remove()


def fusable_layers(model: torch.nn.Module) -> list:
    """The LoRA layers whose forward ``fused_adapter`` may replace: vanilla LoRA (no
    DoRA or other variant), one active adapter, adapters on and not merged, the input
    cast to the adapter's dtype and that dtype at least as wide as the base's (so the
    add happens in the adapter's dtype, as PEFT's does), no forward already set on the
    instance. Quantized layers are other PEFT classes and never listed."""
    from peft.tuners.lora import Linear

    out = []
    for m in model.modules():
        if type(m) is not Linear:
            continue
        if m.disable_adapters:
            return []  # adapters off: PEFT's forward runs the base alone
        if (
            not m.merged
            and list(m.active_adapters) == [ADAPTER]
            and ADAPTER in m.lora_A
            and ADAPTER not in getattr(m, "lora_variant", {})
            and not getattr(m, "use_dora", {}).get(ADAPTER, False)  # PEFT before variants
            and getattr(m, "cast_input_dtype_enabled", True)
            and _widest(m.lora_A[ADAPTER].weight.dtype, m.base_layer.weight.dtype)
            and "forward" not in m.__dict__
        ):
            out.append(m)
    return out


def _widest(adapter: torch.dtype, base: torch.dtype) -> bool:
    return torch.promote_types(adapter, base) == adapter


# forward keywords PEFT reads itself (mixed-adapter batches, aLoRA): its own forward then
PEFT_KWARGS = ("adapter_names", "alora_offsets")


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's vanilla-LoRA ``Linear.forward`` (as in 0.21) for one adapter, in eval mode,
    with the delta scaled and the base output added in place; a test compares the two
    bit for bit on the installed PEFT."""
    if any(k in kwargs for k in PEFT_KWARGS):
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    lora_a, lora_b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
    delta = lora_b(lora_a(layer.lora_dropout[ADAPTER](x.to(lora_a.weight.dtype))))
    delta.mul_(layer.scaling[ADAPTER]).add_(result)
    return delta.to(result.dtype)


def merged_weight(layer) -> torch.Tensor:
    """``W + layer.get_delta_weight()`` bit for bit, for a float32 layer and adapter:
    ``B @ A`` scaled and ``W`` added into that one product."""
    w = layer.base_layer.weight.data
    if layer.fan_in_fan_out:  # a transposed layout (GPT-2's Conv1D): PEFT's own way
        return w + layer.get_delta_weight(ADAPTER)
    merged = layer.lora_B[ADAPTER].weight @ layer.lora_A[ADAPTER].weight
    return merged.mul_(layer.scaling[ADAPTER]).add_(w)


@contextmanager
def fused_adapter(layers: list):
    """Inside the block (generation only: no grad), each of ``layers`` runs
    ``_fused_forward``; its class's forward comes back on exit."""
    patched = []
    try:
        for m in layers:
            m.forward = MethodType(_fused_forward, m)
            patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
