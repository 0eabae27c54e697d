"""``saie-lite bench --only levers``: each speed lever off, then on, on the same work."""

from __future__ import annotations

import time

from saie_lite.bench.parts import (
    DISCUSSION_MAX_LEN,
    BenchSettings,
    _cfg,
    _gen_rate,
    _timed_steps,
    bench_update,
    switched,
)
from saie_lite.protocols import TrainSequence


def bench_levers(s: BenchSettings) -> dict:
    """Each speed lever off, then on, on the same work."""
    from saie_lite.backends.torch_peft import TorchLearner
    from saie_lite.tasks import gsm8k
    from saie_lite.train.prompts import partner_chat

    out: dict = {}
    # 1. Update: full-vocabulary logits in fixed micro-batches -> target-only logits in
    #    length-planned micro-batches.
    learner = TorchLearner(_cfg(s, **{"learner.backend": "torch", "learner.dtype": "float32"}))
    out["device"] = learner.device
    with switched(learner, split_head=False, plan_micro_batches=False):
        before = bench_update(s, "float32", learner)["tokens_per_s"]
    after = bench_update(s, "float32", learner)["tokens_per_s"]
    out["update_tokens_per_s"] = {"before": before, "after": after}
    # 1b. The SAIE update: each example's two stance sequences trained separately, then
    #     packed so their shared question + answer prefix is computed once.
    seqs = stance_sequences(s.batch)
    # A discussion is longer than a plain example: train it at the run default's length
    # (1024), not the plain update's cut, which would drop most targets.
    with switched(learner, max_seq_len=max(s.max_len, DISCUSSION_MAX_LEN)):
        timed = {}
        for label, share in (("before", False), ("after", True)):
            with switched(learner, share_prefix=share):
                timed[label] = _timed_steps(lambda: learner.train_step(seqs).n_tokens, s.steps)
        out["shared_prefix_update_seconds_per_step"] = {
            k: v["seconds_per_step"] for k, v in timed.items()
        }
        out["shared_prefix_update_tokens_per_s"] = {k: v["tokens_per_s"] for k, v in timed.items()}
        # 1c. The packed rows' attention: one masked sdpa call per layer, then block by
        #     block (the prefix causal, each stance against prefix + itself; CPU learners
        #     only). The gain is a few percent, less than this shared VM drifts between
        #     blocks of steps, so the two settings alternate step by step.
        with switched(learner, share_prefix=True):
            if learner.shares_prefix() and learner.attends_blockwise():
                learner.train_step(seqs)  # warm-up
                spent = {"before": 0.0, "after": 0.0}
                for _ in range(s.steps):
                    for label, blockwise in (("before", False), ("after", True)):
                        with switched(learner, blockwise_attention=blockwise):
                            t0 = time.perf_counter()
                            learner.train_step(seqs)
                            spent[label] += time.perf_counter() - t0
                out["blockwise_attention_update_seconds_per_step"] = {
                    k: v / s.steps for k, v in spent.items()
                }
    # 2. Early stop at the final answer, torch batched generation of 192-token answers.
    chats = [gsm8k.learner_chat(e.question) for e in gsm8k.load("bundled")[0][: s.batch]]
    with switched(learner, answer_end=None):
        off = _gen_rate(learner, chats, 192)
    on = _gen_rate(learner, chats, 192)
    out["early_stop_generate_seconds"] = {"before": off["seconds"], "after": on["seconds"]}
    # 3. Remarks, three levers in turn on the same 8 prompts (4 answers x 2 stances):
    #    one at a time with the KV cache cleared before each prompt; one at a time with
    #    the shared prefix of an answer's stances reused; batched decoding (its prompts
    #    packed into shared decode calls, 3a); and then the
    #    same model with q8_0 weights instead of the shipped Q4_1, then q4_0 or f32
    #    instead of q8_0.
    try:
        from saie_lite.backends.llama_cpp import LlamaCppPartner
    except ImportError:
        out["remark_seconds_each"] = "skipped: llama-cpp-python not installed"
        return out

    def remark_prompts(n_answers: int) -> list:
        return [
            partner_chat(e, [e.reference], stance, True)
            for e in gsm8k.load("bundled")[0][:n_answers]
            for stance in ("supportive", "adversarial")
        ]

    prompts = remark_prompts(4)

    def per_remark(partner, chats=prompts) -> float:
        t0 = time.perf_counter()
        partner.remark(chats, 48)
        return (time.perf_counter() - t0) / len(chats)

    partner = LlamaCppPartner(_cfg(s))
    partner.remark(prompts[:2], 4)  # warm-up, both paths
    with switched(partner, parallel=1, reuse_prefix=False):
        cleared = per_remark(partner)
    with switched(partner, parallel=1, reuse_prefix=True):
        reused = per_remark(partner)
    with switched(partner, parallel=8, reuse_prefix=True):
        batched = per_remark(partner)
    # 3a. Batched, a decode call per prompt -> the group's prompts packed into shared
    #     calls; a few percent, so the two alternate and each takes its mean.
    packed = {False: 0.0, True: 0.0}
    for _ in range(2):
        for pack in (False, True):
            with switched(partner, parallel=8, reuse_prefix=True, pack_prompts=pack):
                packed[pack] += per_remark(partner) / 2
    # 3b. Batched, fixed groups of 8 -> an ended remark's place refilled at once; twice
    #     the prompts (8 answers), so a second group has something to refill with.
    more = remark_prompts(8)
    refilled = {False: 0.0, True: 0.0}
    for _ in range(2):
        for refill in (False, True):
            with switched(partner, parallel=8, reuse_prefix=True, refill=refill):
                refilled[refill] += per_remark(partner, more) / 2
    partner.llm.close()

    def requantized(model: str) -> float:
        p = LlamaCppPartner(_cfg(s, **{"partner.model": model}))
        p.remark(prompts[:2], 4)  # warm-up
        t = per_remark(p)
        p.llm.close()
        return t

    quant, quant4 = requantized("embedded-q8_0"), requantized("embedded-q4_0")
    f32, bf16 = requantized("embedded-f32"), requantized("embedded-bf16")
    out["remark_seconds_each"] = {"before": cleared, "after": reused}
    out["batched_remark_seconds_each"] = {"before": reused, "after": batched}
    out["packed_prompts_remark_seconds_each"] = {"before": packed[False], "after": packed[True]}
    out["refill_remark_seconds_each"] = {"before": refilled[False], "after": refilled[True]}
    out["partner_q8_0_remark_seconds_each"] = {"before": batched, "after": quant}
    out["partner_q4_0_remark_seconds_each"] = {"before": quant, "after": quant4}
    out["partner_f32_remark_seconds_each"] = {"before": quant, "after": f32}
    out["partner_bf16_remark_seconds_each"] = {"before": f32, "after": bf16}
    # 3c. What partner.model=embedded-auto runs on this machine, and the timings (seconds
    #     per remark prompt, cached once per machine) it chose by.
    from saie_lite.backends.llama_cpp import embedded_weights
    from saie_lite.backends.partner_weights import forced, measured

    auto = measured(embedded_weights, _cfg(s).partner.n_threads)
    out["partner_weights_auto"] = {"choice": forced() or auto["choice"], **auto["seconds"]}
    return out


# Stand-ins for the partner's remarks: about as long as the 48-token remarks of a run.
REMARKS = {
    "supportive": "Your steps follow the problem and the arithmetic checks out. Keep the "
    "same structure, state each quantity once, and make sure the final line gives the "
    "number the question asks for.",
    "adversarial": "I doubt this. Re-read what the question asks for: you may have added "
    "a quantity twice or skipped one of the steps. Recompute each product and check the "
    "units before you give a final number.",
}


def stance_sequences(n: int) -> list[TrainSequence]:
    """``n`` SAIE training sequences as a discussion batch makes them: per example, the
    question and its answer (here the reference), then each stance's remark, with the
    reference as target; the two sequences of an example share their opening."""
    from saie_lite.tasks import gsm8k
    from saie_lite.train.prompts import discussion_chat

    out = []
    for e in gsm8k.load("bundled")[0][: (n + 1) // 2]:
        base = gsm8k.learner_chat(e.question)
        for stance, remark in REMARKS.items():
            ctx = discussion_chat(base, [e.reference, remark], gsm8k.ANSWER_FORMAT)
            out.append(TrainSequence(ctx, e.reference, kind=stance, group=e.id))
    return out[:n]
