"""Batched decoding on llama.cpp (remarks, snapshot answers) against its one-at-a-time path."""

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from saie_lite.backends.llama_batched import (  # noqa: E402
    BatchedDecoder,
    common_prefix,
    plan_groups,
)


def test_common_prefix_and_groups():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2 and common_prefix([], [1]) == 0
    # at most 3 per group, and prompts + replies within 100 KV cells
    assert plan_groups([10, 10, 10, 10], 5, 3, 100) == [[0, 1, 2], [3]]
    assert plan_groups([60, 30, 30], 10, 8, 100) == [[0], [1, 2]]
    assert plan_groups([200], 10, 8, 100) == [[0]]  # alone, it fits its own context


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
    assert common_prefix(prompts[0], prompts[1]) >= 16  # the KV prefix copy is exercised
    dec = BatchedDecoder(tiny_llm, parallel=4, kv_tokens=1024, n_threads=2)
    got = dec.generate(prompts, 6, stop_ids=set())
    want = [_single(tiny_llm, p, 6) for p in prompts]
    assert got == want
    # early stop per reply, and a stop id ends a reply without being part of it
    short = dec.generate(prompts, 6, stop_ids=set(), done=lambda r: len(r) >= 2)
    assert [len(r) for r in short] == [2, 2, 2, 2]
    stopped = dec.generate(prompts[:1], 6, stop_ids={want[0][3]})
    assert stopped[0] == want[0][: want[0].index(want[0][3])]
    dec.close()


def test_sampling_is_seeded(tiny_llm):
    prompt = tiny_llm.tokenize(b"Weng earns 12 an hour", add_bos=False)
    dec = BatchedDecoder(tiny_llm, parallel=2, kv_tokens=512, n_threads=2)
    a = dec.generate([prompt, prompt], 8, set(), temperature=1.0, seed=3)
    b = dec.generate([prompt, prompt], 8, set(), temperature=1.0, seed=3)
    assert a == b and a[0] != a[1]  # same seed, same draws; two rows, different draws
    dec.close()
