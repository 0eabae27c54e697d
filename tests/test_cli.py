"""The command line: fast help, dry runs, and one clear line for every bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from saie_lite.cli import app; "
        "print([m for m in ('torch', 'transformers', 'datasets', 'llama_cpp', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    r = invoke("train", "--help")
    assert r.exit_code == 0 and "--resume" in r.output and "--dry-run" in r.output


def test_dry_run_writes_run_dir(tmp_path):
    run = tmp_path / "run"
    r = invoke(
        "train",
        "--dry-run",
        "--limit",
        "6",
        "--live",
        "plain",
        "--run-dir",
        str(run),
        "--set",
        "train.batch_size=2",
    )
    assert r.exit_code == 0, r.output
    assert "partner supportive" in r.output and "partner adversarial" in r.output
    assert "finished: 4 updates" in r.output
    assert (run / "config.yaml").is_file() and (run / "saie.sqlite").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000004"
    # a second start in the same directory refuses instead of overwriting
    r = invoke("train", "--dry-run", "--limit", "6", "--run-dir", str(run))
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {run} already holds a run: resume it with --resume {run} or pick another --run-dir"
    )
    # resuming a finished run is a no-op that still succeeds
    r = invoke("train", "--dry-run", "--resume", str(run), "--live", "plain")
    assert r.exit_code == 0 and "finished: 4 updates" in r.output


def test_bad_recipe_key_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method:\n  stance: adversarial\n")
    r = invoke("train", "--dry-run", "--recipe", str(recipe))
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: config: unknown key method.stance (in {recipe}); valid keys: mode, "
        "warmup_fraction, rounds, turns, partner_sees_reference, target, mix_plain, context_policy, "
        "critique_target, critique_weight"
    )


def test_missing_recipe_is_one_line(tmp_path):
    r = invoke("train", "--recipe", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: recipe not found: {tmp_path / 'nope.yaml'} (give a YAML file, e.g. recipes/quickstart.yaml)"
    )


def test_malformed_rows_reported_not_fatal(tmp_path):
    data = tmp_path / "d.jsonl"
    good = {"question": "What is 1+1?", "answer": "1+1=2\n#### 2"}
    rows = [good, {"question": "x"}, {"question": "y", "answer": "no number"}, good, good, good]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = invoke(
        "train",
        "--dry-run",
        "--data",
        str(data),
        "--live",
        "plain",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert r.exit_code == 0, r.output
    assert (
        "note: skipped 2 malformed data rows (1 answer has no '#### N', 1 missing answer)"
        in r.output
    )


def test_missing_partner_model_is_one_line(tmp_path):
    pytest.importorskip("llama_cpp")
    from saie_lite.backends.llama_cpp import resolve_gguf
    from saie_lite.errors import UserError

    with pytest.raises(UserError) as e:
        resolve_gguf(str(tmp_path / "p.gguf"))
    assert str(e.value) == (
        f"partner model file not found: {tmp_path / 'p.gguf'} (give a .gguf path with "
        "--partner-model, or 'embedded')"
    )
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    r = invoke(
        "train",
        "--partner-model",
        str(bad),
        "--backend",
        "scripted",
        "--limit",
        "4",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert r.exit_code == 2
    assert (
        r.output.strip()
        == f"error: partner model {bad} is not a GGUF file (its header lacks 'GGUF')"
    )


def test_unknown_backend_lists_available(tmp_path):
    r = invoke("train", "--backend", "tpu", "--run-dir", str(tmp_path / "r"))
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: unknown learner backend 'tpu'; available: ")
    assert "scripted" in r.output and "torch" in r.output


def test_missing_learner_model_is_one_line(tmp_path):
    pytest.importorskip("torch")
    r = invoke(
        "train",
        "--model",
        "./missing-model",
        "--partner",
        "scripted",
        "--limit",
        "4",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert r.exit_code == 2
    # `--backend auto` (the default) first says which backend it chose, and why
    note, error = r.output.strip().splitlines()
    assert note.startswith("note: learner backend: ")
    assert error == (
        "error: learner model not found: ./missing-model (give a local model directory, a hub id, "
        "or 'embedded')"
    )


@pytest.fixture
def hub_at(monkeypatch):
    """Point the hub at a loopback port and forget any earlier reachability verdict; the
    offline switches the code may flip are restored after the test."""
    import socket

    from saie_lite import hub_access

    monkeypatch.setattr(hub_access, "_checked", None)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for mod, names in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        if mod in sys.modules:
            for name in names:
                monkeypatch.setattr(sys.modules[mod], name, False)

    def point(listening: bool):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if listening:
            s.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
        return s

    return point


def test_unreachable_hub_is_settled_at_once(hub_at):
    # nobody listens on the port: the first hub name switches to the local cache, and a
    # model that is not in it fails in one line without a minute of retries
    sock = hub_at(listening=False)
    try:
        r = invoke("eval", "--backend", "torch", "--model", "nobody/no-such-model",
                   "--data", "bundled", "--limit", "1")  # fmt: skip
    finally:
        sock.close()
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines[-2] == "note: the hub (127.0.0.1) cannot be reached: using the local cache only"
    assert lines[-1] == (
        "error: could not load learner model 'nobody/no-such-model': the hub cannot be "
        "reached and 'nobody/no-such-model' is not in the local cache: connect once to "
        "download it, or give a local path"
    )
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and "Retry" not in r.output


def test_reachable_hub_stays_online(hub_at):
    from saie_lite import hub_access

    sock = hub_at(listening=True)
    try:
        hub_access.settle()
    finally:
        sock.close()
    assert not hub_access.switched_offline()
    import os

    assert "HF_HUB_OFFLINE" not in os.environ


def test_version_flag_and_command_agree():
    from importlib.metadata import version

    r = invoke("--version")
    assert r.exit_code == 0 and r.output == f"saie-lite {version('saie-lite')}\n"
    assert invoke("version").output == f"{version('saie-lite')}\n"  # a bare number, as before


def test_hub_behind_a_proxy_is_checked_at_the_proxy(hub_at, monkeypatch):
    # the hub's own name does not resolve here, but the proxy answers: stay online
    from saie_lite import hub_access

    sock = hub_at(listening=True)
    proxy_port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy_port}")
    try:
        assert hub_access._target() == ("127.0.0.1", proxy_port)
        hub_access.settle()
    finally:
        sock.close()
    assert not hub_access.switched_offline()


def test_unreadable_hub_endpoint_is_left_to_the_library(hub_at, monkeypatch):
    from saie_lite import hub_access

    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co:abc")
    hub_access.settle()  # no traceback, no switch
    assert hub_access._target() is None and not hub_access.switched_offline()


def test_offline_reason_only_for_offline_failures(monkeypatch):
    from saie_lite import hub_access

    monkeypatch.setattr(hub_access, "_checked", True)
    msg = "We couldn't connect to 'https://huggingface.co' to load the files"
    assert "not in the local cache" in hub_access.offline_reason("a/b", msg)
    # another failure (a bad split, a damaged file) keeps the library's own message
    assert hub_access.offline_reason("a/b", "Unknown split 'tset'") is None
    monkeypatch.setattr(hub_access, "_checked", False)
    assert hub_access.offline_reason("a/b", msg) is None


def test_resume_refuses_a_folder_that_is_not_a_training_run(tmp_path):
    from saie_lite import config

    exp = tmp_path / "ablation"
    (exp / "runs").mkdir(parents=True)
    config.save(config.build(), exp / "config.yaml")  # as `ablate --out` leaves it
    r = invoke("train", "--resume", str(exp), "--live", "quiet")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {exp} is not a training run (no saie.sqlite): an ablation keeps its runs "
        f"in {exp / 'runs'}/SYSTEM"
    )
    assert sorted(p.name for p in exp.iterdir()) == ["config.yaml", "runs"]  # nothing started
    # a run killed while its model loaded: only config.yaml, nothing trained
    killed = tmp_path / "killed"
    killed.mkdir()
    config.save(config.build(), killed / "config.yaml")
    r = invoke("train", "--resume", str(killed), "--live", "quiet")
    assert r.exit_code == 2 and r.output.strip().endswith(
        f"stopped before it trained anything (no saie.sqlite): start it again with --run-dir {killed}"
    )


def test_a_dry_run_cannot_resume_a_real_run(tmp_path):
    from saie_lite import config

    run = tmp_path / "run"
    run.mkdir()
    config.save(config.build(overrides={"learner.backend": "torch"}), run / "config.yaml")
    (run / "saie.sqlite").write_bytes(b"")
    before = (run / "config.yaml").read_text()
    r = invoke("train", "--resume", str(run), "--dry-run")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {run} was trained with the torch learner: a dry run cannot go on with it; "
        "resume it without --dry-run"
    )
    assert (run / "config.yaml").read_text() == before  # before: rewritten to scripted


@pytest.mark.parametrize(
    "argv,start,end",
    [
        (["eval", "--limit", "abc"], "error: Invalid value for '--limit'", "eval --help')"),
        (["train", "--bogus"], "error: No such option: --bogus", "train --help')"),
        (["nosuch"], "error: No such command 'nosuch'", "(see 'saie-lite --help')"),
    ],
)
def test_a_wrong_flag_or_value_is_one_line(monkeypatch, capsys, argv, start, end):
    """The installed program (``main``), not only the app: Typer alone draws a box."""
    import sys

    from saie_lite.cli import main

    monkeypatch.setattr(sys, "argv", ["saie-lite", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    out = capsys.readouterr()
    line = out.err.strip()
    assert "\n" not in line and line.startswith(start) and line.endswith(end), out
    assert out.out == ""


@pytest.mark.parametrize(
    "argv,code,text",
    [
        (["version"], 0, "0."),  # a finished command
        (["--help"], 0, "Usage"),
        (["logs", "show", "999"], 2, "error: no debate 999"),  # a command's own one line
        ([], 2, "Usage"),  # a bare program: its help, as before
        (["logs"], 2, "Usage"),
    ],
)
def test_the_program_keeps_exit_codes(monkeypatch, capsys, argv, code, text):
    import sys

    from saie_lite.cli import main

    monkeypatch.setattr(sys, "argv", ["saie-lite", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == code
    out = capsys.readouterr()
    assert text in out.out + out.err
    if text == "Usage":
        assert "error" not in out.out + out.err


def test_a_reader_gone_away_ends_quietly():
    """`saie-lite ... | head`: a broken pipe is no error to report (exit 1, no line)."""
    from saie_lite.commands.guard import GuardedTyper

    app_ = GuardedTyper()

    @app_.command()
    def talk() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    @app_.command()
    def other() -> None:
        pass

    r = CliRunner().invoke(app_, ["talk"])
    assert r.exit_code == 1 and "error" not in r.output
