"""`learner.dtype: auto` on a CPU is decided by a measured fp32/bf16 matmul probe, cached per
machine. Both branches are tested by scripting the probe's timings, so the verdict never
depends on the CPU the suite runs on."""

from __future__ import annotations

import json

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
