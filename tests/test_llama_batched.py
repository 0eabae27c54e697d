"""Batched decoding on llama.cpp (remarks, snapshot answers) against its one-at-a-time path."""

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from saie_lite.backends.llama_batched import (  # noqa: E402
    BatchedDecoder,
    common_prefix,
    prefill_plan,
)


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2 and common_prefix([], [1]) == 0


def test_prefill_plan_evaluates_a_shared_prefix_once_for_every_sharer():
    a = list(range(40))
    b = a[:30] + [100, 101]  # shares 30 tokens with a
    c = a[:30] + [100, 102, 103]  # 31 with b, 30 of them b's borrowed from a
    d = [7, 8]  # nothing in common
    e = list(a)  # all of a: its last token is evaluated again, for its own logits
    prompts = [a, b, c, d, e]
    plan, copies = prefill_plan(prompts)
    assert copies == []  # nothing cached
    # a token fills a sharer's cell only where their prefixes agree up to it
    for s, pos, seqs in plan:
        assert all(prompts[q][: pos + 1] == prompts[s][: pos + 1] for q in seqs)
    # every (sequence, position) of every prompt is filled exactly once
    filled = [(seq, pos) for _, pos, seqs in plan for seq in seqs]
    want = [(s, pos) for s, p in enumerate(prompts) for pos in range(len(p))]
    assert sorted(filled) == sorted(want)
    # and each shared token is evaluated once: 40 + 2 + 2 + 2 + 1 tokens, not 147
    assert len(plan) == 47
    assert plan[0] == (0, 0, (0, 1, 2, 4)) and plan[29][2] == (0, 1, 2, 4)
    assert plan[30] == (0, 30, (0, 4)) and (1, 30, (1, 2)) in plan
    assert (4, 39, (4,)) in plan
    # a sequence's tokens come in increasing positions
    for seq in range(5):
        got = [pos for _, pos, seqs in plan if seq in seqs]
        assert got == sorted(got)


def test_prefill_plan_tags_the_cells_of_a_sequence_still_decoding():
    live = list(range(50))  # a cached prompt (its sequence still decoding)
    other = [9, 9, 9]
    a = live[:20] + [200, 201]  # 20 in common with the cached prompt
    b = live[:20] + [200, 202]  # 21 with a: 20 of them cached, 1 a's
    c = [9, 9, 5]  # 2 with the second cached prompt
    plan, copies = prefill_plan([a, b, c], [live, other])
    # each copy: (cached prompt, new prompt, positions below m)
    assert sorted(copies) == [(0, 0, 20), (0, 1, 20), (1, 2, 2)]
    # evaluated: a's 2 own tokens, b's last, c's last; a's position 20 filled for b too
    assert plan == [(0, 20, (0, 1)), (0, 21, (0,)), (1, 21, (1,)), (2, 2, (2,))]


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_dir, tmp_path_factory):
    from saie_lite.backends.llama_load import open_llama
    from saie_lite.gguf_writer import write_gguf

    path = write_gguf(tiny_model_dir, tmp_path_factory.mktemp("g") / "tiny.gguf", "f16")
    llm = open_llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False)
    yield llm
    llm.close()


def _single(llm, prompt, n):
    out = []
    for tok in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0):
        out.append(tok)
        if len(out) >= n:
            break
    return out


def test_batched_greedy_matches_one_at_a_time(tiny_llm):
    base = tiny_llm.tokenize(
        b"Natalia sold clips to 48 of her friends in April, and then", add_bos=False
    )
    prompts = [
        base + tiny_llm.tokenize(t.encode(), add_bos=False) for t in (" she", " half", " how")
    ]
    prompts.append(tiny_llm.tokenize(b"Weng earns 12 an hour for babysitting.", add_bos=False))
    assert common_prefix(prompts[0], prompts[1]) >= 10  # a shared prefix is exercised
    dec = BatchedDecoder(tiny_llm, parallel=4, kv_tokens=1024, n_threads=2)
    calls = []
    decode = dec._decode
    dec._decode = lambda entries: (calls.append(len(entries)), decode(entries))
    got = dec.generate(prompts, 6, stop_ids=set())
    want = [_single(tiny_llm, p, 6) for p in prompts]
    assert got == want
    # all four prompts read in one decode call, the shared prefix once
    assert calls[0] == len(prefill_plan(prompts)[0]) < sum(map(len, prompts))
    assert len(calls) == 1 + 5  # then one call per new token after the first
    # prompts split over several calls, a call's end falling inside a prompt and inside
    # the shared prefix: the same replies
    small = BatchedDecoder(tiny_llm, parallel=4, kv_tokens=1024, n_threads=2, n_batch=5)
    assert small.generate(prompts, 6, stop_ids=set()) == want
    small.close()
    # early stop per reply, and a stop id ends a reply without being part of it
    short = dec.generate(prompts, 6, stop_ids=set(), done=lambda r: len(r) >= 2)
    assert [len(r) for r in short] == [2, 2, 2, 2]
    stopped = dec.generate(prompts[:1], 6, stop_ids={want[0][3]})
    assert stopped[0] == want[0][: want[0].index(want[0][3])]
    dec.close()


def test_a_sequence_that_ends_hands_its_place_to_the_next_prompt(tiny_llm, monkeypatch):
    import saie_lite.backends.llama_batched as lb

    base = tiny_llm.tokenize(b"Natalia sold clips to 48 of her friends in April", add_bos=False)
    prompts = [base + tiny_llm.tokenize(t.encode(), add_bos=False) for t in (" and", " or", " but")]
    prompts.append(tiny_llm.tokenize(b"Weng earns 12 an hour for babysitting.", add_bos=False))
    want = [_single(tiny_llm, p, 8) for p in prompts]
    # replies end at different lengths, as remarks do: 2, 8, 5 and 3 tokens
    ends = {tuple(w[:n]) for w, n in zip(want, (2, 8, 5, 3))}
    assert len(ends) == 4
    copies = []
    cp = lb.llama_cpp.llama_memory_seq_cp
    monkeypatch.setattr(
        lb.llama_cpp, "llama_memory_seq_cp", lambda *a: (copies.append(a[1:]), cp(*a))[1]
    )
    dec = BatchedDecoder(tiny_llm, parallel=2, kv_tokens=1024, n_threads=2)
    calls = []
    decode = dec._decode
    dec._decode = lambda entries: (calls.append(len(entries)), decode(entries))
    got = {}
    for refill in (True, False):
        dec.refill = refill
        calls.clear()
        got[refill] = dec.generate(prompts, 8, set(), done=lambda r: tuple(r) in ends)
        got[refill, "calls"] = len(calls)
    dec.close()
    expect = [w[:n] for w, n in zip(want, (2, 8, 5, 3))]
    assert got[True] == expect and got[False] == expect
    # refilled: prompt 2 joins as soon as prompt 0 ends, while prompt 1 still decodes, and
    # takes the opening they share from prompt 1's cells (sequence 1 -> 0, base's length)
    assert (1, 0, 0, len(base)) in copies
    # fixed pairs decode for their longest reply: 1 + 7 calls, then 1 + 4
    assert got[False, "calls"] == 13
    # refilled: prompt 2 is read in the call that gives prompt 1 its third token, prompt 3
    # in the one that gives it its eighth (prompt 2 has ended): 8 calls, then prompt 3's
    # last 2 tokens
    assert got[True, "calls"] == 10


def test_an_empty_prompt_is_refused(tiny_llm):
    dec = BatchedDecoder(tiny_llm, parallel=2, kv_tokens=512, n_threads=2)
    with pytest.raises(ValueError, match="empty prompt"):
        dec.generate([[1, 2], []], 4, set())
    dec.close()


def test_sampling_is_seeded(tiny_llm):
    prompt = tiny_llm.tokenize(b"Weng earns 12 an hour", add_bos=False)
    dec = BatchedDecoder(tiny_llm, parallel=2, kv_tokens=512, n_threads=2)
    a = dec.generate([prompt, prompt], 8, set(), temperature=1.0, seed=3)
    b = dec.generate([prompt, prompt], 8, set(), temperature=1.0, seed=3)
    assert a == b and a[0] != a[1]  # same seed, same draws; two rows, different draws
    dec.close()
