"""The shared-prefix update (``train.share_prefix``): an example's stance sequences packed
into one row with a block attention mask give the same loss and the same LoRA gradients
as training each sequence on its own, on tiny random llama and qwen2 models in float32."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from saie_lite import config  # noqa: E402
from saie_lite.backends import packed_attention, torch_peft  # noqa: E402
from saie_lite.chat_tokens import IGNORE, micro_batches, pack_shared  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402

BASE = [
    {"role": "system", "content": "Solve it."},
    {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"},
    {"role": "assistant", "content": "3 + 4 = 8\n#### 8"},
]


def stance_pair(ex_id: str, answer_note: str) -> list[TrainSequence]:
    """Two sequences sharing question + answer, differing from the partner's remark on."""
    base = BASE[:2] + [{"role": "assistant", "content": f"3 + 4 = 8 {answer_note}\n#### 8"}]
    out = []
    for stance, remark in (("supportive", "Good work."), ("adversarial", "Recheck 3 + 4.")):
        ctx = base + [{"role": "user", "content": f"A discussion partner replied:\n{remark}"}]
        out.append(TrainSequence(ctx, "3 + 4 = 7\n#### 7", kind=stance, group=ex_id))
    return out


def batch() -> list[TrainSequence]:
    return (
        stance_pair("a", "apples")
        + stance_pair("b", "in all, counting twice")
        + [TrainSequence(BASE[:2], "7\n#### 7")]  # a plain sequence, no group
    )


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def learner(
    model_dir,
    share: bool,
    mb: int = 2,
    device: str = "cpu",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
):
    cfg = config.build(
        overrides={
            "learner.model": str(model_dir),
            "learner.max_seq_len": 512,
            "learner.device": device,
            "learner.dtype": dtype,
            "learner.quantize": "none",  # auto would be 4-bit on CUDA
            "learner.gradient_checkpointing": gradient_checkpointing,
            "train.micro_batch_size": mb,
            "train.share_prefix": share,
        }
    )
    lr = torch_peft.TorchLearner(cfg)
    # LoRA B starts at zero, which would leave every A gradient zero: randomise all
    # adapter weights (same values in both learners) so every gradient is tested.
    gen = torch.Generator().manual_seed(1)
    for p in lr.params:
        p.data = (torch.randn(p.shape, generator=gen) * 0.05).to(p.device, p.dtype)
    return lr


def grads_after_step(lr, seqs):
    """Loss and the LoRA gradients of one step (the optimizer update is switched off)."""
    lr.opt.step = lambda: None
    lr.cfg.train.grad_clip = 0.0
    stats = lr.train_step(seqs)
    return stats, {n: p.grad.clone() for n, p in lr.model.named_parameters() if p.requires_grad}


def count_blockwise_rows(monkeypatch) -> list[int]:
    """Counts rows computed by the block-by-block attention (packed_attention._row)."""
    calls = [0]
    row = packed_attention._row

    def counted(*args, **kwargs):
        calls[0] += 1
        return row(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "_row", counted)
    return calls


def assert_same_update(model_dir, seqs, mb=2, attn="sdpa", device="cpu", monkeypatch=None):
    shared, plain = learner(model_dir, True, mb, device), learner(model_dir, False, mb, device)
    for lr in (shared, plain):
        lr.model.get_base_model().set_attn_implementation(attn)
        assert lr.model.get_base_model().config._attn_implementation == attn
    assert shared.shares_prefix() and not plain.shares_prefix()
    calls = count_blockwise_rows(monkeypatch) if monkeypatch else None
    (s1, g1), (s2, g2) = grads_after_step(shared, seqs), grads_after_step(plain, seqs)
    if calls is not None:  # a CPU learner under sdpa computes packed rows block by block
        assert calls[0] > 0 if (attn, device) == ("sdpa", "cpu") else calls[0] == 0
    # the packed pass leaves the model's own attention implementation as it was
    assert shared.model.get_base_model().config._attn_implementation == attn
    assert s1.loss == pytest.approx(s2.loss, rel=1e-5)
    assert (s1.n_target_tokens, s1.n_tokens) == (s2.n_target_tokens, s2.n_tokens)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for n in g1:
        assert g1[n].abs().sum() > 0, n
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n


def test_shared_prefix_update_equals_unshared_llama(tiny_model_dir, monkeypatch):
    assert_same_update(tiny_model_dir, batch(), monkeypatch=monkeypatch)


@CUDA
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_update_equals_unshared_on_cuda(tiny_model_dir, attn):
    assert_same_update(tiny_model_dir, batch(), attn=attn, device="cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_shared_prefix_update_close_to_unshared_bf16(tiny_model_dir, device, monkeypatch):
    """bf16, as a GPU (or a CPU with bf16 units under `dtype: auto`) trains: equal up to
    bf16 rounding (the two paths sum in a different order), far closer than a wrong mask
    (test below) moves the loss. On the CPU the packed rows go block by block."""
    shared, plain = (learner(tiny_model_dir, sh, 2, device, "bfloat16") for sh in (True, False))
    assert shared.shares_prefix()
    calls = count_blockwise_rows(monkeypatch)
    (s1, g1), (s2, g2) = grads_after_step(shared, batch()), grads_after_step(plain, batch())
    assert calls[0] > 0 if device == "cpu" else calls[0] == 0
    assert s1.loss == pytest.approx(s2.loss, rel=1e-2)
    for n in g1:
        a, b = g1[n].float().flatten(), g2[n].float().flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, n


def test_shared_prefix_update_equals_unshared_eager_attention(tiny_model_dir, monkeypatch):
    assert_same_update(tiny_model_dir, batch(), attn="eager", monkeypatch=monkeypatch)


def test_shared_prefix_update_equals_unshared_one_micro_batch(tiny_model_dir):
    assert_same_update(tiny_model_dir, batch(), mb=8)


def test_shared_prefix_update_equals_unshared_qwen2(tiny_qwen2_dir, monkeypatch):
    assert_same_update(tiny_qwen2_dir, batch(), monkeypatch=monkeypatch)


def test_shared_prefix_update_with_the_full_mask_equals_blockwise(tiny_model_dir, monkeypatch):
    """The GPU's path (one masked sdpa call per layer) gives the CPU's update too."""
    blockwise, masked = learner(tiny_model_dir, True), learner(tiny_model_dir, True)
    masked.blockwise_attention = False
    calls = count_blockwise_rows(monkeypatch)
    (s1, g1) = grads_after_step(blockwise, batch())
    used = calls[0]
    (s2, g2) = grads_after_step(masked, batch())
    assert used > 0 and calls[0] == used  # only the first learner went block by block
    assert s1.loss == pytest.approx(s2.loss, rel=1e-5)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n


def masked_reference(q, k, v, segments):
    """sdpa under the packed rows' block mask, as _packed_loss_sum builds it."""
    seg = torch.tensor(segments)
    width = len(segments)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((seg[:, None] == seg[None, :]) | (seg[None, :] == 0)) & (seg[None] >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, enable_gqa=True
    )


@pytest.mark.parametrize(
    "segments",
    [
        [0] * 5 + [1] * 4 + [2] * 6,  # prefix, two stances
        [0] * 3 + [1] * 2 + [2] * 3 + [3] * 2 + [-1] * 3,  # three continuations, padding
        [1] * 4 + [2] * 5,  # no common prefix
        [0] * 7 + [-1] * 2,  # a single sequence (its own prefix), padded
    ],
)
def test_blockwise_attention_equals_the_block_mask(segments):
    """Outputs and q/k/v gradients equal the masked computation at every real position
    (grouped-query heads: 4 query heads over 2 key/value heads)."""
    lay = packed_attention.row_layout(segments)
    assert lay is not None
    gen = torch.Generator().manual_seed(0)
    n = len(segments)
    q, k, v = (torch.randn(1, h, n, 8, generator=gen, requires_grad=True) for h in (4, 2, 2))
    real = torch.tensor([s >= 0 for s in segments])
    got, _ = packed_attention.packed_sdpa(None, q, k, v, None, packed_layout=[lay])
    got = got.transpose(1, 2)  # back to [batch, heads, length, dim]
    want = masked_reference(q, k, v, segments)
    assert torch.allclose(got[:, :, real], want[:, :, real], atol=1e-6)
    weights = torch.randn(want.shape, generator=gen) * real[None, None, :, None]
    g_got = torch.autograd.grad((got * weights).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_blockwise_attention_in_half_precision(dtype):
    """``learner.dtype: auto`` can pick bf16 on a CPU with bf16 units: in half precision
    the blockwise path is as close to a float32 reference as the masked call is."""
    segments = [0] * 6 + [1] * 5 + [2] * 7 + [-1] * 2
    lay = packed_attention.row_layout(segments)
    gen = torch.Generator().manual_seed(3)
    n = len(segments)
    q, k, v = (torch.randn(1, h, n, 16, generator=gen) for h in (4, 2, 2))
    real = torch.tensor([s >= 0 for s in segments])
    ref = masked_reference(q, k, v, segments)[:, :, real]
    half = [t.to(dtype) for t in (q, k, v)]
    got, _ = packed_attention.packed_sdpa(None, *half, None, packed_layout=[lay])
    got = got.transpose(1, 2)[:, :, real].float()
    masked = masked_reference(*half, segments)[:, :, real].float()
    err_blockwise = (got - ref).abs().max()
    err_masked = (masked - ref).abs().max()
    assert err_blockwise <= 2 * err_masked + 1e-3, (err_blockwise, err_masked)


def test_row_layout_refuses_rows_it_cannot_split():
    assert packed_attention.row_layout([0, 0, 1, 1, 2, -1]) == packed_attention.RowLayout(2, (2, 1))
    assert packed_attention.row_layout([0, 1, 0, 1]) is None  # prefix token after a stance
    assert packed_attention.row_layout([0, 1, 2, 1]) is None  # a stance split in two
    assert packed_attention.row_layout([0, 1, -1, 2]) is None  # a token after padding


def test_a_wrong_mask_is_caught(tiny_model_dir):
    """The equality test can fail: letting one stance's tokens see the other stance's
    remark changes the loss."""
    seqs = batch()
    shared, plain = learner(tiny_model_dir, True), learner(tiny_model_dir, False)
    rows = pack_shared([shared.encode(s) for s in seqs], [s.group for s in seqs])
    leaky = [r for r in rows if r.n_sequences == 2]
    for r in leaky:  # continuation 1 treated as prefix: continuation 2 sees it
        r.segments = [0 if s == 1 else s for s in r.segments]
    with torch.no_grad():
        bad = float(shared._packed_loss_sum(leaky))
        good = float(plain._micro_loss_sum([plain.encode(s) for s in seqs[:4]]))
    assert bad != pytest.approx(good, rel=1e-4)


def test_pack_shared_layout():
    enc = [([1, 2, 3, 4], [IGNORE, IGNORE, IGNORE, 4]), ([1, 2, 5, 6, 7], [IGNORE] * 3 + [6, 7])]
    plain = ([9, 8], [IGNORE, 8])
    rows = pack_shared(enc + [plain], ["x", "x", ""])
    assert [r.n_sequences for r in rows] == [1, 2]  # sorted by length
    row = rows[1]
    assert row.ids == [1, 2, 3, 4, 5, 6, 7]
    assert row.positions == [0, 1, 2, 3, 2, 3, 4]
    assert row.segments == [0, 0, 1, 1, 2, 2, 2]
    # 4 is predicted from 3 (row index 2); 6 from 5 (index 4); 7 from 6 (index 5)
    assert row.predict == [(2, 4), (4, 6), (5, 7)]
    assert row.n_tokens == 9


def test_micro_batches_count_packed_sequences():
    assert micro_batches([5, 6, 7], 4) == micro_batches([5, 6, 7], 4, sizes=[1, 1, 1])
    spans = micro_batches([10, 10, 10], 4, overhead=1000, sizes=[2, 2, 2])
    assert all(end - start <= 2 for start, end in spans)  # at most 4 sequences each
    assert micro_batches([10], 1, sizes=[3]) == [(0, 1)]  # an oversized row still runs


def test_off_for_dropout_and_unsupported_models(tiny_model_dir):
    lr = learner(tiny_model_dir, True)
    lr.cfg.learner.lora_dropout = 0.1
    assert not lr.shares_prefix()
    assert not torch_peft.packing_supported(type("C", (), {"model_type": "gemma2"})())


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir):
    """``learner.gradient_checkpointing`` trades time for memory, never the result."""
    base = learner(tiny_model_dir, False)
    ckpt = learner(tiny_model_dir, False, gradient_checkpointing=True)  # same random adapter
    assert ckpt.model.get_base_model().is_gradient_checkpointing
    (s1, g1), (s2, g2) = grads_after_step(ckpt, batch()), grads_after_step(base, batch())
    assert s1.loss == pytest.approx(s2.loss, rel=1e-6)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-5, atol=1e-7), n


def test_gradient_checkpointing_with_the_shared_prefix(tiny_model_dir, monkeypatch):
    """Under activation checkpointing the packed rows keep the one masked sdpa call (a
    checkpointed layer's recompute must save what its forward pass saved): the prefix is
    still shared, no row goes block by block, and the update is the same."""
    base = learner(tiny_model_dir, True)
    ckpt = learner(tiny_model_dir, True, gradient_checkpointing=True)
    assert ckpt.shares_prefix() and torch_peft.checkpointing(ckpt.model.get_base_model())
    calls = count_blockwise_rows(monkeypatch)
    s1, g1 = grads_after_step(ckpt, batch())
    assert calls[0] == 0
    s2, g2 = grads_after_step(base, batch())
    assert calls[0] > 0  # the learner without checkpointing went block by block
    assert s1.loss == pytest.approx(s2.loss, rel=1e-5)
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n


def test_a_gpu_plans_fewer_passes_than_a_cpu():
    """On a GPU a pass costs kernel launches, not tokens: the same lengths that a CPU
    splits into several micro-batches go through in one."""
    from saie_lite.chat_tokens import GPU_MICRO_BATCH_OVERHEAD, MICRO_BATCH_OVERHEAD

    lengths = [120, 140, 160, 190, 210, 230, 250, 256]
    assert len(micro_batches(lengths, 8, overhead=MICRO_BATCH_OVERHEAD)) > 1
    assert micro_batches(lengths, 8, overhead=GPU_MICRO_BATCH_OVERHEAD) == [(0, 8)]
