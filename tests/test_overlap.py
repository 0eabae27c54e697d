"""``train.overlap``: the next batch's discussion prepared during the update. A run with
overlap stores the same turns, events and steps and ends with the same adapter as one
without (scripted models, and a tiny llama on the fast path), and overlap happens
only where the next batch does not depend on the update in flight."""

import threading

import pytest

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train.loop import overlap_enabled, train


class SnapshotLike(ScriptedLearner):
    """A scripted learner whose answers (like the fast path's snapshot) change only at
    multiples of ``every`` updates; records which thread generated what."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.seed_step, self.threads = every, None, []
        self.loaded = 0  # the update count whose weights give the answers

    def unchanged_by_update(self, step: int) -> bool:
        return self.loaded == (step // self.every) * self.every

    def answers_fixed_through(self, step: int) -> int:
        return (step // self.every) * self.every + self.every - 1

    def generate(self, chats, max_new_tokens, temperature=0.0):
        self.loaded = (self.step // self.every) * self.every
        if self.seed_step is not None:  # prepared during update seed_step (in flight)
            assert self.loaded == (self.seed_step // self.every) * self.every
        self.threads.append(threading.current_thread().name)
        seed = self.step if self.seed_step is None else self.seed_step
        return [f"Using snapshot {self.loaded} seed {seed}.\n#### {len(c)}" for c in chats]


def table(store, sql):
    return store.db.execute(sql).fetchall()


def run(tmp_path, overlap, learner, partner, cfg_over=None, n=10):
    cfg = config.build(
        overrides={
            "train.batch_size": 2,
            "train.save_every": 2,
            "method.warmup_fraction": 0.2,
            "method.turns": 2,
            "train.overlap": overlap,
            # overlap alone (test_lookahead.py has the two together)
            "train.lookahead": False,
            **(cfg_over or {}),
        }
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "saie.sqlite")
    try:
        summary = train(cfg, learner, partner, gsm8k.load("bundled")[0][:n], store, tmp_path)
        turns = table(
            store,
            "SELECT step, phase, round, example_id, turn, role, stance, prompt, text, correct,"
            " cached FROM turns ORDER BY id",
        )
        steps = table(store, "SELECT step, phase, round, loss, n_sequences FROM steps")
        events = table(store, "SELECT kind, message FROM events ORDER BY id")
    finally:
        store.close()
    return summary, turns, steps, events


class SometimesSilent(ScriptedPartner):
    """Every third remark missing (as the HTTP partner reports a null reply)."""

    def remark(self, chats, max_tokens):
        from saie_lite.protocols import MissingRemark

        out = super().remark(chats, max_tokens)
        self.n = getattr(self, "n", 0)
        for i in range(len(out)):
            self.n += 1
            if self.n % 3 == 0:
                out[i] = MissingRemark("null content")
        return out


def test_overlap_counts_missing_remarks_like_a_run_without(tmp_path):
    out = {}
    for mode in ("off", "on"):
        learner = SnapshotLike(every=3)
        over = {"partner.max_missing_share": 0.9, "method.turns": 1}
        out[mode] = run(tmp_path / mode, mode, learner, SometimesSilent(), over)[0], learner
    (s_off, _), (s_on, l_on) = out["off"], out["on"]
    assert "saie-overlap_0" in l_on.threads  # the worker fetched some of them
    assert s_on["missing_remarks"] == s_off["missing_remarks"] > 0


def test_overlap_auto_only_on_a_gpu():
    assert overlap_enabled("auto", "cuda") and overlap_enabled("auto", "mps")
    assert not overlap_enabled("auto", "cpu") and not overlap_enabled("auto", None)
    assert overlap_enabled("on", "cpu") and not overlap_enabled("off", "cuda")


def test_overlap_stores_the_same_run_as_without(tmp_path):
    out = {}
    for mode in ("off", "on"):
        learner, partner = SnapshotLike(every=3), ScriptedPartner()
        out[mode] = run(tmp_path / mode, mode, learner, partner), learner, partner
    (s_off, *rows_off), l_off, p_off = out["off"]
    (s_on, *rows_on), l_on, p_on = out["on"]
    assert rows_on == rows_off  # turns, steps, events: identical
    assert s_on["step"] == s_off["step"] == 5
    assert [h for h in l_on.history] == [h for h in l_off.history]
    assert p_on.history == p_off.history
    # It did overlap: some answers were generated on the worker, during an update whose
    # step is not a multiple of 3; off never leaves the main thread.
    assert "saie-overlap_0" in l_on.threads
    assert set(l_off.threads) == {"MainThread"}
    assert l_on.threads.count("saie-overlap_0") < len(l_on.threads)


def test_on_policy_learner_never_overlaps(tmp_path):
    class Tracking(ScriptedLearner):
        threads: list = []

        def generate(self, chats, max_new_tokens, temperature=0.0):
            self.threads.append(threading.current_thread().name)
            return super().generate(chats, max_new_tokens, temperature)

    learner = Tracking()
    run(tmp_path, "on", learner, ScriptedPartner())
    assert learner.threads and set(learner.threads) == {"MainThread"}


def test_partner_error_on_the_worker_surfaces_after_the_update(tmp_path):
    from saie_lite.errors import PartnerError

    class Failing(ScriptedPartner):
        def remark(self, chats, max_tokens):
            if len(self.history) == 4:  # the third discussion batch's first remarks
                raise PartnerError("server down")
            return super().remark(chats, max_tokens)

    results = {}
    for mode in ("off", "on"):
        with pytest.raises(PartnerError, match="server down; checkpoint saved at update 3"):
            run(tmp_path / mode, mode, SnapshotLike(every=3), Failing())
        store = Store(tmp_path / mode / "saie.sqlite")
        results[mode] = (
            table(store, "SELECT step, role, text FROM turns ORDER BY id"),
            table(store, "SELECT step FROM steps"),
        )
        store.close()
    assert results["on"] == results["off"]


@pytest.mark.parametrize(
    "device,refresh", [("cpu", "merge"), ("cpu", "adapter"), ("cuda", "merge")]
)
def test_fast_path_overlap_ends_with_the_same_adapter(tiny_model_dir, tmp_path, device, refresh):
    """Sampled answers (temperature 0.8) from a snapshot refreshed every 2 updates (a
    merged snapshot, or the base with the adapter applied by llama.cpp): the batch after
    update 3 is prepared during it, with the seed it gets without overlap. On CUDA too,
    where overlap is on by default (skipped without a GPU)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from saie_lite.backends import torch_peft
    from saie_lite.train.fast_generation import SnapshotAnswers

    over = {
        "learner.model": str(tiny_model_dir),
        "learner.backend": "torch",
        "learner.device": device,
        "learner.quantize": "none",  # auto would be 4-bit on CUDA: no snapshot from that
        "learner.max_new_tokens": 6,
        "learner.temperature": 0.8,
        "learner.snapshot_every": 2,
        "learner.snapshot_quant": "f16",
        "learner.snapshot_refresh": refresh,
        "method.turns": 1,
        "partner.max_tokens": 8,
        "train.lr": 0.02,
    }
    adapters, stored = {}, {}
    for mode in ("off", "on"):
        cfg = config.build(overrides=over)
        inner = torch_peft.TorchLearner(cfg)
        learner = SnapshotAnswers(inner, cfg, tmp_path / mode / "snapshot")
        threads = []
        generate = learner.generate

        def recording(*a, generate=generate, threads=threads, **kw):
            threads.append(threading.current_thread().name)
            return generate(*a, **kw)

        learner.generate = recording
        summary, *rows = run(tmp_path / mode, mode, learner, ScriptedPartner(), over, n=8)
        assert summary["step"] == 4
        adapters[mode] = {
            n: p.detach().clone() for n, p in inner.model.named_parameters() if p.requires_grad
        }
        stored[mode] = rows
        assert ("saie-overlap_0" in threads) == (mode == "on"), threads
        learner._close()
    (turns_on, steps_on, events_on), (turns_off, steps_off, events_off) = (
        stored["on"],
        stored["off"],
    )
    assert turns_on == turns_off and events_on == events_off
    if device == "cpu":
        assert steps_on == steps_off
    else:  # an H200 run stored the same turns and losses equal to 1e-7 (float order)
        assert [r[:3] + r[4:] for r in steps_on] == [r[:3] + r[4:] for r in steps_off]
        assert [r[3] for r in steps_on] == pytest.approx([r[3] for r in steps_off], rel=1e-5)
    for name, value in adapters["off"].items():
        if device == "cpu":
            assert torch.equal(adapters["on"][name], value), name
        else:  # CUDA's attention backward may sum in another order from run to run
            torch.testing.assert_close(adapters["on"][name], value, rtol=1e-4, atol=1e-6)
