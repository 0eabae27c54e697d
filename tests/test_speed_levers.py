"""Pure parts of the speed levers (bench issue): micro-batch planning, ..."""

import itertools

from saie_lite.chat_tokens import micro_batches


def _cost(lengths, spans, overhead):
    return sum((e - s) * max(lengths[s:e]) + overhead for s, e in spans)


def test_micro_batches_cover_in_order_and_respect_max_rows():
    lengths = [132, 151, 151, 171, 172, 177, 210, 256]
    spans = micro_batches(lengths, 4)
    assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(0 < e - s <= 4 for s, e in spans)


def test_micro_batches_split_off_a_long_outlier():
    # One 256-token row padded with seven ~140-token rows wastes ~800 tokens of padding.
    spans = micro_batches([130, 135, 140, 140, 141, 142, 150, 256], 8, overhead=64)
    assert spans == [(0, 7), (7, 8)]
    # Equal lengths: nothing to gain, one forward pass.
    assert micro_batches([100] * 6, 8, overhead=64) == [(0, 6)]


def test_micro_batches_is_optimal_against_brute_force():
    lengths = [20, 35, 36, 80, 81, 200]
    best = min(
        _cost(lengths, spans, 50)
        for cuts in itertools.chain.from_iterable(
            itertools.combinations(range(1, 6), k) for k in range(6)
        )
        for spans in [list(zip((0, *cuts), (*cuts, 6)))]
        if all(e - s <= 3 for s, e in spans)
    )
    assert _cost(lengths, micro_batches(lengths, 3, overhead=50), 50) == best


def test_stance_prompts_share_everything_but_the_last_sentence():
    """llama.cpp reuses the KV cache of a shared prompt prefix: the two stances' prompts
    on one answer must differ only at the end."""
    from saie_lite.protocols import Example
    from saie_lite.train import prompts as d

    ex = Example("e1", "What is 2+3?", "2+3=5\n#### 5", "5")
    sup, adv = (d.partner_chat(ex, ["It is 6.\n#### 6"], s, True) for s in d.STANCE_INSTRUCTION)
    assert sup[0] == adv[0]
    a, b = sup[1]["content"], adv[1]["content"]
    shared = len(a) - len(d.STANCE_INSTRUCTION["supportive"])
    assert a[:shared] == b[:shared] and "It is 6." in a[:shared] and "2+3=5" in a[:shared]
