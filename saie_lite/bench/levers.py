"""``saie-lite bench --only levers``: each speed lever off, then on, on the same work."""

from __future__ import annotations

import time

from saie_lite.bench.parts import BenchSettings, _cfg, _gen_rate, bench_update


def bench_levers(s: BenchSettings) -> dict:
    """Each speed lever off, then on, on the same work."""
    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.tasks import gsm8k
    from saie_lite.train.prompts import partner_chat

    out: dict = {}
    # 1. Update: full-vocabulary logits in fixed micro-batches -> target-only logits in
    #    length-planned micro-batches.
    learner = TorchLearner(_cfg(s, **{"learner.backend": "torch", "learner.dtype": "float32"}))
    head = learner.split_head
    learner.split_head, learner.plan_micro_batches = None, False
    before = bench_update(s, "float32", learner)["tokens_per_s"]
    learner.split_head, learner.plan_micro_batches = head, True
    after = bench_update(s, "float32", learner)["tokens_per_s"]
    out["update_tokens_per_s"] = {"before": before, "after": after}
    # 2. Early stop at the final answer, torch batched generation of 192-token answers.
    chats = [gsm8k.learner_chat(e.question) for e in gsm8k.load("bundled")[0][: s.batch]]
    end = learner.answer_end
    learner.answer_end = None
    off = _gen_rate(learner, chats, 192)
    learner.answer_end = end
    on = _gen_rate(learner, chats, 192)
    out["early_stop_generate_seconds"] = {"before": off["seconds"], "after": on["seconds"]}
    # 3. Remarks, three levers in turn on the same 8 prompts (4 answers x 2 stances):
    #    one at a time with the KV cache cleared before each prompt; one at a time with
    #    the shared prefix of an answer's stances reused; batched decoding; and then the
    #    same model with q8_0 weights instead of the shipped Q4_1.
    try:
        from saie_lite.backends.llama_cpp import LlamaCppPartner
    except ImportError:
        out["remark_seconds_each"] = "skipped: llama-cpp-python not installed"
        return out
    exs = gsm8k.load("bundled")[0][:4]
    prompts = [
        partner_chat(e, [e.reference], stance, True)
        for e in exs
        for stance in ("supportive", "adversarial")
    ]

    def per_remark(partner) -> float:
        t0 = time.perf_counter()
        partner.remark(prompts, 48)
        return (time.perf_counter() - t0) / len(prompts)

    partner = LlamaCppPartner(_cfg(s))
    partner.remark(prompts[:2], 4)  # warm-up, both paths
    partner.parallel, partner.reuse_prefix = 1, False
    cleared = per_remark(partner)
    partner.reuse_prefix = True
    reused = per_remark(partner)
    partner.parallel = 8
    batched = per_remark(partner)
    partner.llm.close()
    q8 = LlamaCppPartner(_cfg(s, **{"partner.model": "embedded-q8_0"}))
    q8.remark(prompts[:2], 4)
    quant = per_remark(q8)
    q8.llm.close()
    out["remark_seconds_each"] = {"before": cleared, "after": reused}
    out["batched_remark_seconds_each"] = {"before": reused, "after": batched}
    out["partner_q8_0_remark_seconds_each"] = {"before": batched, "after": quant}
    return out
    exs = gsm8k.load("bundled")[0][:4]
    prompts = [
        partner_chat(e, [e.reference], stance, True)
        for e in exs
        for stance in ("supportive", "adversarial")
    ]
    partner = LlamaCppPartner(_cfg(s))
    partner.remark(prompts[:1], 4)
    timed = {}
    for label, reuse in (("before", False), ("after", True)):
        partner.reuse_prefix = reuse
        t0 = time.perf_counter()
        partner.remark(prompts, 48)
        timed[label] = (time.perf_counter() - t0) / len(prompts)
    out["remark_seconds_each"] = timed
    partner.llm.close()
    # 4. Partner weights: the shipped Q4_1 file against the same model in q8_0.
    q8 = LlamaCppPartner(_cfg(s, **{"partner.model": "embedded-q8_0"}))
    q8.remark(prompts[:1], 4)
    t0 = time.perf_counter()
    q8.remark(prompts, 48)
    out["partner_q8_0_remark_seconds_each"] = {
        "before": timed["after"],
        "after": (time.perf_counter() - t0) / len(prompts),
    }
    q8.llm.close()
    return out
