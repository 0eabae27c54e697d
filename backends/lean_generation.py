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
- ``packed_linears`` (CPU): torch's plain product takes the weight in torch's layout
  (bf16: repacked for oneDNN inside every call; float32: MKL's own packing inside every
  call); packed for oneDNN once per ``generate`` call, a decoding step's products ran 1.2-2x
  faster in bf16, 2-3.5x in float32 (different kernels: equal in bf16 on an
  AVX512-BF16 CPU, within 1e-5 in float32; greedy answers are compared in the tests).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
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


def lora_layers(model: torch.nn.Module) -> list:
    """The model's vanilla LoRA layers (no DoRA or other variant) with the one adapter
    active and not merged; [] when adapters are off (PEFT's forward then runs the base
    alone, nothing to merge or fuse). Quantized layers are other PEFT classes and never
    listed. What the merge and ``fused_adapter`` each start from."""
    from peft.tuners.lora import Linear

    out = []
    for m in model.modules():
        if type(m) is not Linear:
            continue
        if m.disable_adapters:
            return []
        if (
            not m.merged
            and list(m.active_adapters) == [ADAPTER]
            and ADAPTER in m.lora_A
            and ADAPTER not in getattr(m, "lora_variant", {})
            and not getattr(m, "use_dora", {}).get(ADAPTER, False)  # PEFT before variants
        ):
            out.append(m)
    return out


def fusable_layers(model: torch.nn.Module) -> list:
    """The ``lora_layers`` whose forward ``fused_adapter`` may replace: the input cast to
    the adapter's dtype and that dtype at least as wide as the base's (so the add
    happens in the adapter's dtype, as PEFT's does), no forward already set on the
    instance."""
    return [
        m
        for m in lora_layers(model)
        if getattr(m, "cast_input_dtype_enabled", True)
        and _widest(m.lora_A[ADAPTER].weight.dtype, m.base_layer.weight.dtype)
        and "forward" not in m.__dict__
    ]


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
def replaced_forwards(layers: list, forward):
    """Inside the block each of ``layers`` runs ``forward(layer, ...)`` (generation only:
    no grad); its class's forward comes back on exit, even from a failure mid-way."""
    patched = []
    try:
        for m in layers:
            m.forward = MethodType(forward(m), m)
            patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def fused_adapter(layers: list):
    """Each of ``layers`` runs ``_fused_forward`` inside the block."""
    return replaced_forwards(layers, lambda _m: _fused_forward)


def packing_available() -> bool:
    """oneDNN's prepacked linear (the kernels torch.compile's CPU backend calls)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


def _bf16_packing() -> bool:
    """oneDNN packs bf16 weights only on a CPU with bf16 conversion (AVX512-BW/VL/DQ or
    AVX-NE-CONVERT); elsewhere the reorder raises, and torch's plain product serves."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def packable_linears(model: torch.nn.Module) -> list:
    """Every plain linear layer of the model (each adapted layer's base, the head, any
    layer left unadapted), on a CPU in float32 (or bf16 where oneDNN packs it), not the
    adapter's small factors (r columns: nothing to gain)."""
    if not packing_available() or not torch.backends.mkldnn.enabled:
        return []
    dtypes = (torch.float32, torch.bfloat16) if _bf16_packing() else (torch.float32,)
    factors = set()
    for m in model.modules():
        for name in ("lora_A", "lora_B"):
            factors.update(id(f) for f in getattr(m, name, {}).values())
    return [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and id(m) not in factors
        and m.weight.device.type == "cpu"
        and m.weight.dtype in dtypes
        and "forward" not in m.__dict__
    ]


def _packed_forward(layer, input: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    # ``input``: nn.Linear's own name, for keyword calls
    if input.dtype != packed.dtype or not input.is_contiguous():
        return torch.nn.functional.linear(input, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(input, packed, layer.bias, "none", [], "")


def packed_linears(layers: list, rows: int):
    """Inside the block each of ``layers`` multiplies by its weight packed once into
    oneDNN's blocked layout for ``rows``-row inputs, instead of packing it again inside
    every product. Packed per block, never kept: a frozen base can still be rewritten in
    place (loading a checkpoint), and a merged weight is new every call."""

    def packed_forward(m):
        packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
        return partial(_packed_forward, packed=packed)

    return replaced_forwards(layers, packed_forward)
