"""Attention for packed stance rows that skips the blocks the mask would hide.

A packed row (``chat_tokens.PackedRow``) is a shared prefix, then each stance's
continuation. Under one block attention mask, torch's CPU attention kernel computes
every query-key pair of the row and masks most of them away: the upper causal half, and
each continuation against the other. Here each row is computed block by block instead:
the prefix with a plain causal kernel (which skips the upper half), each continuation
against the prefix keys and its own. The arithmetic per kept pair is the same, so the
result equals the masked computation up to float summation order
(``tests/test_shared_prefix.py``).

It is a transformers attention function, used only while a packed row is evaluated
(``packed_forward``); every other forward pass runs the model's own sdpa. Packed rows
fall back to sdpa with the full block mask (same values) on a GPU, where the row-by-row
kernel launches would cost more than the skipped blocks save, and under activation
checkpointing, whose recompute must save the same tensors as the forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "saie_packed_sdpa"


@dataclass(frozen=True)
class RowLayout:
    prefix: int  # tokens of the shared prefix at the start of the row
    pieces: tuple[int, ...]  # each continuation's length, in row order; padding follows


def row_layout(segments: list[int]) -> RowLayout | None:
    """The layout of one packed row from its segment ids (0 prefix, i continuation i,
    -1 padding), or None when the row is not prefix, contiguous continuations, padding."""
    n = len(segments)
    p = 0
    while p < n and segments[p] == 0:
        p += 1
    pieces, i = [], p
    while i < n and segments[i] > 0:
        j = i
        while j < n and segments[j] == segments[i]:
            j += 1
        pieces.append(j - i)
        i = j
    if any(s != -1 for s in segments[i:]) or len(set(segments[p:i])) != len(pieces):
        return None
    return RowLayout(p, tuple(pieces))


def _row(q, k, v, lay: RowLayout, scale: float, gqa: bool) -> torch.Tensor:
    """Attention output of one row ([heads, length, dim]); padding positions are zero."""
    p = lay.prefix
    parts = []
    if p:
        parts.append(
            F.scaled_dot_product_attention(
                q[:, :p], k[:, :p], v[:, :p], is_causal=True, scale=scale, enable_gqa=gqa
            )
        )
    start = p
    for n in lay.pieces:
        keys = torch.cat([k[:, :p], k[:, start : start + n]], 1)
        vals = torch.cat([v[:, :p], v[:, start : start + n]], 1)
        # query i of the continuation sees the whole prefix and its own tokens up to i
        mask = torch.ones(n, p + n, dtype=torch.bool, device=q.device).tril(diagonal=p)
        parts.append(
            F.scaled_dot_product_attention(
                q[:, start : start + n], keys, vals, attn_mask=mask, scale=scale, enable_gqa=gqa
            )
        )
        start += n
    pad = q.shape[1] - start
    if pad:
        parts.append(q.new_zeros(q.shape[0], pad, v.shape[-1]))
    return torch.cat(parts, 1)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: ``packed_layout`` (one RowLayout per batch row)
    selects the block-by-block path; without it, or with dropout, plain sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layouts = kwargs.pop("packed_layout", None)
    if layouts is None or dropout:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    gqa = key.shape[1] != query.shape[1]
    rows = [_row(query[b], key[b], value[b], lay, scale, gqa) for b, lay in enumerate(layouts)]
    # transformers expects [batch, length, heads, dim]
    return torch.stack(rows).transpose(1, 2).contiguous(), None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, packed_sdpa)
        # Masks are built as for sdpa: a forward pass given a 2D padding mask while the
        # name is set would otherwise get no mask at all (transformers skips masks for
        # names it does not know), and plain sdpa would then ignore the padding.
        AttentionMaskInterface.register(NAME, AttentionMaskInterface._global_mapping["sdpa"])
        _registered = True


@contextmanager
def packed_forward(config):
    """While open, the model's attention runs through ``packed_sdpa`` (pass
    ``packed_layout=`` to the forward call); the configured implementation is restored
    on exit. The switch is the model's, not the thread's: no other forward pass of the
    same model may run meanwhile (none does: the loop's overlap worker only prepares
    discussions whose answers come from a llama.cpp snapshot, never from this model)."""
    _register()
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
