"""`learner.dtype: auto` on a CPU is decided by a measured fp32/bf16 matmul probe, cached per
machine. Both branches are tested by scripting the probe's timings, so the verdict never
depends on the CPU the suite runs on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from saie_lite.backends import cpu_dtype, torch_setup  # noqa: E402


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path))
    monkeypatch.delenv("SAIE_LITE_CPU_BF16", raising=False)
    return tmp_path


@pytest.mark.parametrize("bf16_seconds,choice", [(0.001, torch.bfloat16), (0.050, torch.float32)])
def test_auto_follows_the_measurement_and_caches_it(probe_env, monkeypatch, bf16_seconds, choice):
    calls = []

    def fake_probe(n=512, repeats=5):
        calls.append(n)
        speedup = 0.010 / bf16_seconds
        return {
            "float32_seconds": 0.010,
            "bfloat16_seconds": bf16_seconds,
            "bf16_speedup": speedup,
            "choice": "bfloat16" if speedup >= cpu_dtype.BF16_MIN_SPEEDUP else "float32",
        }

    monkeypatch.setattr(cpu_dtype, "probe", fake_probe)
    assert torch_setup.resolve_dtype("auto", "cpu") == choice
    assert torch_setup.resolve_dtype("auto", "cpu") == choice
    assert len(calls) == 1  # measured once, then read from the cache
    cached = json.loads((probe_env / "machine" / "cpu-dtype.json").read_text())
    assert cached["machine"] == cpu_dtype.machine_key()
    assert cached["choice"] == str(choice).removeprefix("torch.")
    # another machine (or torch, or thread count) measures again
    (probe_env / "machine" / "cpu-dtype.json").write_text(json.dumps({**cached, "machine": "x"}))
    torch_setup.resolve_dtype("auto", "cpu")
    assert len(calls) == 2


@pytest.mark.parametrize("forced,choice", [("1", torch.bfloat16), ("0", torch.float32)])
def test_environment_overrides_the_probe(probe_env, monkeypatch, forced, choice):
    monkeypatch.setenv("SAIE_LITE_CPU_BF16", forced)
    monkeypatch.setattr(cpu_dtype, "probe", lambda *a, **k: pytest.fail("probe ran"))
    assert torch_setup.resolve_dtype("auto", "cpu") == choice
    assert torch_setup.resolve_dtype("float16", "cpu") == torch.float16  # explicit wins


def test_the_real_probe_measures_both_dtypes(probe_env):
    out = cpu_dtype.probe(n=64, repeats=2)
    assert out["float32_seconds"] > 0 and out["bfloat16_seconds"] > 0
    assert out["choice"] in ("float32", "bfloat16")
    assert (out["choice"] == "bfloat16") == (out["bf16_speedup"] >= cpu_dtype.BF16_MIN_SPEEDUP)


# -- the first update checks the probe's bf16 --------------------------------------------

pytest.importorskip("peft")

from saie_lite import config  # noqa: E402
from saie_lite.backends import torch_peft  # noqa: E402
from saie_lite.protocols import TrainSequence  # noqa: E402

CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
SEQS = [
    TrainSequence(CHAT, "2 + 3 = 5\n#### 5"),
    TrainSequence(CHAT, "It is 6 because 3 + 3 = 6.\n#### 6"),
]
real_time_update = cpu_dtype.time_update


def tiny_learner(model_dir, **over):
    cfg = config.build(
        overrides={
            "learner.model": str(model_dir),
            "learner.max_seq_len": 256,
            "train.micro_batch_size": 2,
            "train.lr": 0.01,
            **over,
        }
    )
    return torch_peft.TorchLearner(cfg)


def base_dtypes(learner) -> set:
    return {p.dtype for n, p in learner.model.named_parameters() if "lora_" not in n}


def adapter_state(learner) -> dict:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if "lora_" in n}


@pytest.fixture
def probe_picks_bf16(probe_env, monkeypatch):
    """The matmul probe says bf16 (whatever this CPU would say)."""
    picked = {"float32_seconds": 0.02, "bfloat16_seconds": 0.01, "bf16_speedup": 2.0}
    monkeypatch.setattr(cpu_dtype, "probe", lambda *a, **k: {**picked, "choice": "bfloat16"})
    return probe_env


def scripted_timings(monkeypatch, bf16_seconds, fp32_seconds, calls):
    """The real timing (warm-ups, casts, passes) with its seconds replaced, so the verdict
    never depends on this CPU while the passes it runs still happen."""

    def timed(one_pass, to_float32, to_bf16):
        calls.append("timed")
        real_time_update(one_pass, to_float32, to_bf16)
        return bf16_seconds, fp32_seconds

    monkeypatch.setattr(cpu_dtype, "time_update", timed)


@pytest.mark.parametrize(
    "bf16_seconds,choice", [(0.9, torch.float32), (1.0, torch.float32), (0.5, torch.bfloat16)]
)
def test_the_first_update_decides_auto_and_the_next_run_starts_in_its_dtype(
    tiny_model_dir, probe_picks_bf16, monkeypatch, capsys, bf16_seconds, choice
):
    calls = []
    scripted_timings(monkeypatch, bf16_seconds, 1.0, calls)
    learner = tiny_learner(tiny_model_dir, **{"learner.dtype": "auto"})
    assert base_dtypes(learner) == {torch.bfloat16}  # the probe's pick, until the update
    learner.train_step(SEQS)
    learner.train_step(SEQS)
    assert calls == ["timed"]  # once, before the first update only
    assert base_dtypes(learner) == {choice} and learner.dtype == choice
    assert all(p.dtype == torch.float32 for p in learner.params)  # adapters stay float32
    err = capsys.readouterr().err
    if choice == torch.float32:
        assert err.count("\n") == 1 and err.startswith("note: learner.dtype auto: ")
        assert "trains in float32" in err and "SAIE_LITE_CPU_BF16=1" in err
    else:
        assert "note:" not in err  # bf16 confirmed: nothing to say
    cached = json.loads((probe_picks_bf16 / "machine" / "cpu-dtype.json").read_text())
    assert cached["machine"] == cpu_dtype.machine_key()
    assert cached["choice"] == "bfloat16"  # the probe's own answer is kept beside
    check = cached["update_check"]
    assert (check["bfloat16_seconds"], check["float32_seconds"]) == (bf16_seconds, 1.0)
    assert check["choice"] == str(choice).removeprefix("torch.")
    # the next run on this machine loads in the checked dtype and times nothing
    monkeypatch.setattr(cpu_dtype, "time_update", lambda *a: pytest.fail("timed again"))
    again = tiny_learner(tiny_model_dir, **{"learner.dtype": "auto"})
    assert base_dtypes(again) == {choice}
    again.train_step(SEQS)
    # a fresh probe (the bench refreshes it) keeps the verdict; another machine does not
    assert cpu_dtype.measured(refresh=True)["update_check"] == check
    path = cpu_dtype.cache_path()
    path.write_text(json.dumps({**json.loads(path.read_text()), "machine": "another"}))
    assert cpu_dtype.update_check_due()


@pytest.mark.parametrize("verdict", ["bfloat16", "float32"])
def test_the_update_after_the_check_is_the_one_without_it(
    tiny_model_dir, probe_picks_bf16, monkeypatch, verdict
):
    """Gradients, optimizer state and the dropout RNG the check's passes touched are put
    back: the first update equals that of a learner loaded straight in the checked dtype
    (bf16 weights widened to float32 for the float32 verdict, as the check widens them)."""
    calls = []
    scripted_timings(monkeypatch, 0.5 if verdict == "bfloat16" else 2.0, 1.0, calls)
    over = {"learner.lora_dropout": 0.2}  # dropout draws from the RNG the passes use
    checked = tiny_learner(tiny_model_dir, **{"learner.dtype": "auto", **over})
    plain = tiny_learner(tiny_model_dir, **{"learner.dtype": "bfloat16", **over})
    if verdict == "float32":
        plain.model.float()
    losses = []
    for learner in (checked, plain):
        learner.reseed(7)
        losses.append([learner.train_step(SEQS).loss for _ in range(2)])
    assert calls == ["timed"]
    assert base_dtypes(checked) == base_dtypes(plain) == {getattr(torch, verdict)}
    assert losses[0] == losses[1]
    a, b = adapter_state(checked), adapter_state(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [len(s) for s in checked.opt.state.values()] == [
        len(s) for s in plain.opt.state.values()
    ]


def test_no_update_check_when_forced_explicit_or_probe_says_float32(
    tiny_model_dir, probe_env, monkeypatch
):
    monkeypatch.setattr(cpu_dtype, "time_update", lambda *a: pytest.fail("timed"))
    monkeypatch.setenv("SAIE_LITE_CPU_BF16", "1")  # forced bf16: kept as it is
    forced = tiny_learner(tiny_model_dir, **{"learner.dtype": "auto"})
    forced.train_step(SEQS)
    assert base_dtypes(forced) == {torch.bfloat16}
    monkeypatch.delenv("SAIE_LITE_CPU_BF16")
    slow = {"float32_seconds": 0.01, "bfloat16_seconds": 0.05, "bf16_speedup": 0.2}
    monkeypatch.setattr(cpu_dtype, "probe", lambda *a, **k: {**slow, "choice": "float32"})
    tiny_learner(tiny_model_dir, **{"learner.dtype": "auto"}).train_step(SEQS)
    tiny_learner(tiny_model_dir, **{"learner.dtype": "bfloat16"}).train_step(SEQS)


def test_the_timing_warms_up_each_dtype_then_alternates_and_keeps_each_ones_best(
    monkeypatch,
):
    monkeypatch.setattr(cpu_dtype, "ROUNDS", 2)
    events = []
    # each timed pass reads the clock twice (the warm-ups do not): 4 timed passes
    ticks = iter([0, 5, 0, 3, 0, 2, 0, 4])  # timed: bf16 5, fp32 3, bf16 2, fp32 4
    monkeypatch.setattr(cpu_dtype, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    bf16, fp32 = real_time_update(
        lambda: events.append("pass"),
        lambda: events.append("to fp32"),
        lambda: events.append("to bf16"),
    )
    assert events == [
        *("pass", "pass"),  # bf16 as loaded: warm-up, timed
        *("to fp32", "pass", "pass"),
        *("to bf16", "pass"),
        *("to fp32", "pass"),  # ends in float32, as the caller expects
    ]
    # a slow spell (bf16's first timed pass) does not decide: each dtype's best counts
    assert (bf16, fp32) == (2, 3)


# -- bf16 training matches fp32 training in loss ----------------------------------------

# bf16 keeps 8 significant bits: one rounding step is 2**-8 (0.4%) of a value. The mean
# loss of a step sums many such roundings, which mostly cancel (about 1e-4 here).
BF16_LOSS_TOLERANCE = 2**-8


def relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def test_bf16_training_matches_fp32_in_loss(tiny_model_dir):
    def losses(**over):
        learner = tiny_learner(tiny_model_dir, **over)
        return [learner.train_step(SEQS).loss for _ in range(2)]

    fp32 = losses(**{"learner.dtype": "float32"})
    bf16 = losses(**{"learner.dtype": "bfloat16"})
    assert relative(bf16, fp32) < BF16_LOSS_TOLERANCE
    # the tolerance does tell runs apart: a tenth of the learning rate shows at step 2
    slower = losses(**{"learner.dtype": "float32", "train.lr": 0.001})
    assert relative(slower, fp32) > 2 * BF16_LOSS_TOLERANCE


@pytest.mark.parametrize("bf16_speedup", [2.0, 0.1])  # full bf16 measurement, and reduced
def test_the_bench_reports_bf16_against_fp32_loss(
    tiny_model_dir, probe_env, monkeypatch, bf16_speedup
):
    from saie_lite.bench import parts
    from saie_lite.bench.report import markdown

    fake = {"float32_seconds": 0.01, "bfloat16_seconds": 0.01 / bf16_speedup}
    fake |= {"bf16_speedup": bf16_speedup, "choice": "bfloat16"}
    monkeypatch.setattr(cpu_dtype, "probe", lambda *a, **k: fake)
    monkeypatch.setattr(parts, "matmul_peak_gflops", lambda: 100.0)
    s = parts.BenchSettings(model=str(tiny_model_dir), steps=1, batch=4, max_len=256)
    out = parts.bench_update_part(s)
    la = out["loss_bf16_vs_fp32"]
    n = 4 if bf16_speedup > 1 else 2  # the reduced bf16 run is compared on its own 2
    assert la["sequences"] == n
    assert len(out["float32"]["losses"]) == 2  # warm-up + 1 timed
    assert len(la["float32_losses"]) == len(la["bfloat16_losses"]) == 2
    first = abs(la["bfloat16_losses"][0] - la["float32_losses"][0]) / la["float32_losses"][0]
    assert la["first_step_relative_difference"] == pytest.approx(first)
    assert 0 < la["first_step_relative_difference"] < BF16_LOSS_TOLERANCE
    assert la["largest_relative_difference"] >= la["first_step_relative_difference"]
    machine = {"system": "Linux", "machine": "x86_64", "cpus": 2, "python": "3"}
    report = {"machine": machine, "versions": {}, "settings": {}, "peak_rss_mb": 1.0}
    md = markdown({**report, "results": {"update": out}})
    row = f"| bf16 vs fp32 loss, first step (relative difference) | {first:.1e} (largest over 2"
    assert row in md and f"; {n} sequences) |" in md
