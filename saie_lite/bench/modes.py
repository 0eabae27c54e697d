"""The CPU modes of ``bench --only saie`` (``--modes`` picks some): each a set of config
overrides run through the real loop, against plain SFT."""

from __future__ import annotations

from saie_lite.errors import UserError

# The SAIE vs SFT part's modes on a CPU: run name -> config overrides ("sft" is the
# baseline every ratio is taken against).
CPU_MODES = {
    "sft": {"method.mode": "sft"},
    "saie": {"method.mode": "saie"},
    # the fast generation path: a snapshot refreshed every 4 updates
    "saie_fast": {"method.mode": "saie", "learner.snapshot_every": 4},
    # ... and the partner's prompts evaluated on q8_0 weights
    "saie_fast_q8": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "partner.model": "embedded-q8_0",
    },
    # ... and both the snapshot and the partner as float32 GGUFs (on an AVX2 CPU
    # llama.cpp evaluates prompts faster from f32 than from q8_0 or q4_0 weights)
    "saie_fast_f32": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "f32",
        "partner.model": "embedded-f32",
    },
    # ... and both as bf16 GGUFs (llama.cpp's bf16 dot products, on a CPU with
    # AVX512-BF16; converted on the fly, and slow, elsewhere)
    "saie_fast_bf16": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "bf16",
        "partner.model": "embedded-bf16",
    },
    # ... and both weight types chosen by measuring them on this machine
    # (partner.model: embedded-auto, snapshot_quant: auto; backends/partner_weights.py)
    "saie_fast_auto": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "auto",
        "partner.model": "embedded-auto",
    },
    # ... decoded batch by batch: without train.lookahead (the answers of the batches
    # one snapshot serves, and their first remarks, decoded together)
    "saie_fast_auto_per_batch": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "auto",
        "partner.model": "embedded-auto",
        "train.lookahead": False,
    },
    # ... and the next batch's answers and remarks prepared during each update that
    # keeps the snapshot (train.overlap: on; off by default on a CPU), the partner on
    # one thread so it shares the cores with the update instead of fighting for both
    "saie_fast_auto_overlap": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "auto",
        "partner.model": "embedded-auto",
        "partner.n_threads": 1,
        "train.overlap": "on",
    },
    # ... with a snapshot after every update (answers on-policy up to float
    # rounding): the f32 base once, then only the adapter per refresh
    "saie_fast_adapter": {
        "method.mode": "saie",
        "learner.snapshot_every": 1,
        "learner.snapshot_quant": "f32",
        "learner.snapshot_refresh": "adapter",
        "partner.model": "embedded-f32",
    },
    # ... the same with both weight types measured (snapshot_quant: auto): a refresh
    # costs milliseconds, so every update stays on-policy
    "saie_fast_auto_adapter": {
        "method.mode": "saie",
        "learner.snapshot_every": 1,
        "learner.snapshot_quant": "auto",
        "learner.snapshot_refresh": "adapter",
        "partner.model": "embedded-auto",
    },
    # ... and refreshed every 4 updates, like the merged modes above
    "saie_fast_auto_adapter4": {
        "method.mode": "saie",
        "learner.snapshot_every": 4,
        "learner.snapshot_quant": "auto",
        "learner.snapshot_refresh": "adapter",
        "partner.model": "embedded-auto",
    },
}


def chosen_modes(modes: str) -> dict:
    """``bench --modes``: the named CPU modes, with "sft" always first; "" = every mode."""
    names = [m.strip() for m in modes.split(",") if m.strip()] or list(CPU_MODES)
    unknown = [m for m in names if m not in CPU_MODES]
    if unknown:
        raise UserError(
            f"unknown bench mode(s) {', '.join(unknown)}; modes: {', '.join(CPU_MODES)}"
        )
    return {m: CPU_MODES[m] for m in ["sft", *[n for n in names if n != "sft"]]}
