"""The OpenAI-compatible partner against a scripted loopback server: retries, timeouts,
malformed JSON, concurrency, the API key, and a server that dies mid-run."""

import io
import time

import pytest
from fault_server import FaultServer
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.openai_http import OpenAIPartner
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.errors import PartnerError, UserError
from saie_lite.protocols import MissingRemark
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train import checkpoint
from saie_lite.train.loop import train

CHAT = [{"role": "user", "content": "Remark on: 2+2=5"}]


def partner_for(url, **over):
    cfg = config.build(
        overrides={
            "partner.backend": "openai",
            "partner.url": url,
            "partner.model": "test-model",
            "partner.backoff": 0.01,
            "partner.retries": 2,
            "partner.timeout": 2.0,
            **over,
        }
    )
    return OpenAIPartner(cfg), cfg


def test_retries_500_429_and_malformed_json(server):
    p, _ = partner_for(server.url, **{"partner.retries": 3})
    server.actions.extend(["500", "429", "malformed", "ok:Check step two."])
    assert p.remark([CHAT], 32) == ["Check step two."]
    assert len(server.requests) == 4
    body = server.requests[0]["body"]
    assert body["model"] == "test-model" and body["messages"] == CHAT and body["max_tokens"] == 32


def test_slow_reply_times_out_then_retries(server):
    # margins wide enough for a busy machine: the fast reply has 1 s, the slow one takes 3
    p, _ = partner_for(server.url, **{"partner.timeout": 1.0})
    server.actions.extend(["slow:3.0", "ok:Quick now."])
    assert p.remark([CHAT], 8) == ["Quick now."]
    assert len(server.requests) == 2


def test_gives_up_with_one_line(server):
    p, _ = partner_for(server.url)
    server.actions.extend(["503", "503", "503"])
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == f"partner server {server.url} failed after 3 attempts (HTTP 503)"


def test_client_errors_are_not_retried_and_say_where_to_look(server):
    p, _ = partner_for(server.url, **{"partner.retries": 3})
    server.actions.extend(["404", "400"])
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == (
        f"partner server {server.url} answered HTTP 404 (check partner.url, which ends in "
        '/v1, and partner.model): {"error": "scripted failure"}'
    )
    with pytest.raises(PartnerError, match=r"HTTP 400 \(a prompt past the server's context"):
        p.remark([CHAT], 8)
    assert len(server.requests) == 2  # one request each: a client error is not retried


def test_refused_connection_names_url():
    p, _ = partner_for("http://127.0.0.1:9/v1", **{"partner.retries": 1})
    with pytest.raises(
        PartnerError, match=r"partner server http://127.0.0.1:9/v1 failed after 2 attempts \("
    ):
        p.remark([CHAT], 8)


def test_api_key_sent_but_never_written(server, tmp_path, monkeypatch):
    secret = "sk-test-very-secret-4242"
    monkeypatch.setenv("SAIE_TEST_KEY", secret)
    cfg = config.build(
        overrides={
            "learner.backend": "scripted",
            "partner.backend": "openai",
            "partner.url": server.url,
            "partner.api_key_env": "SAIE_TEST_KEY",
            "data.limit": 6,
            "train.batch_size": 2,
            "run.dir": str(tmp_path / "run"),
        }
    )
    from saie_lite.train.runs import start_training
    from saie_lite.ui.train_view import PlainView

    start_training(cfg, tmp_path / "run", False, False, PlainView())
    assert server.requests and all(
        r["headers"]["Authorization"] == f"Bearer {secret}" for r in server.requests
    )
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert "SAIE_TEST_KEY" in (tmp_path / "run" / "config.yaml").read_text()


def test_missing_key_variable_is_one_line(server):
    with pytest.raises(UserError) as e:
        partner_for(server.url, **{"partner.api_key_env": "SAIE_UNSET_VAR_X"})
    assert str(e.value) == "partner.api_key_env names SAIE_UNSET_VAR_X, which is not set: export it"


def test_requests_run_concurrently(server):
    p, _ = partner_for(server.url, **{"partner.concurrency": 4})
    server.actions.extend(["slow:1.0"] * 4)
    assert len(p.remark([CHAT] * 4, 8)) == 4
    assert server.max_in_flight >= 2


def test_degenerate_remark_retried_then_skipped(server, tmp_path):
    _, cfg = partner_for(server.url)
    from saie_lite import config as c

    c.apply(
        cfg,
        {
            "learner.backend": "scripted",
            "method.mode": "saie-support",
            "train.batch_size": 1,
            "method.warmup_fraction": 0.0,
            "train.max_steps": 2,
        },
    )
    exs = gsm8k.load("bundled")[0][:2]
    # example 1: no letters, then a real remark; example 2: no letters twice
    server.actions.extend(["ok:...", "ok:Good, keep going.", "ok:???", "ok:!!!"])
    learner = ScriptedLearner()
    store = Store(tmp_path / "s.sqlite")
    train(cfg, learner, OpenAIPartner(cfg), exs, store, tmp_path)
    steps = [h for h in learner.history if h["call"] == "train_step"]
    assert len(steps) == 1  # the second batch had nothing left to train on
    assert "Good, keep going." in steps[0]["sequences"][0].context[-1]["content"]
    notes = [m for (m,) in store.db.execute("SELECT message FROM events WHERE kind='remark'")]
    assert len(notes) == 1 and "degenerate remark (asked twice), discussion skipped" in notes[0]
    (skip,) = [m for (m,) in store.db.execute("SELECT message FROM events WHERE kind='skip'")]
    assert skip == (
        "batch 2: nothing to train, every discussion was skipped (degenerate or missing "
        "remarks: see the notes above)"
    )
    # the skipped batch's answer and degenerate remark are stored all the same
    remarks = [t for (t,) in store.db.execute("SELECT text FROM turns WHERE role='partner'")]
    assert remarks == ["Good, keep going.", "???"]
    stance, d = store.remark_diagnostics()[-1]
    assert stance == "supportive" and d["degenerate"]
    store.close()


def test_server_down_mid_run_checkpoints_then_resumes(tmp_path):
    server = FaultServer()
    exs = gsm8k.load("bundled")[0][:8]
    cfg = config.build(
        overrides={
            "learner.backend": "scripted",
            "partner.backend": "openai",
            "partner.url": server.url,
            "partner.retries": 1,
            "partner.backoff": 0.01,
            "train.batch_size": 2,
            "train.save_every": 100,
            "method.warmup_fraction": 0.25,
        }
    )

    class KillAfterTwo:
        def __getattr__(self, name):
            return lambda *a: None

        def on_step(self, row):
            if row["step"] == 2:
                server.close()

    p1 = OpenAIPartner(cfg)
    store = Store(tmp_path / "saie.sqlite")
    with pytest.raises(PartnerError) as e:
        train(cfg, ScriptedLearner(), p1, exs, store, tmp_path, KillAfterTwo())
    assert str(e.value).startswith(f"partner server {server.url} failed after 2 attempts (")
    assert str(e.value).endswith(
        f"checkpoint saved at update 2; once the server is fixed: saie-lite train --resume {tmp_path}"
    )
    assert checkpoint.latest(tmp_path).name == "step-000002"
    # the server comes back on the same port and the run resumes
    back = FaultServer(port=server.port)
    try:
        p2 = OpenAIPartner(cfg)
        s = train(cfg, ScriptedLearner(), p2, exs, store, tmp_path)
        assert s["status"] == "finished" and s["step"] == 4
        # every remark was paid for exactly once: 3 discussion batches x 2 examples x 2 stances
        assert p1.requests_ok + p2.requests_ok == store.count("remark_cache") == 12
    finally:
        back.close()
        store.close()


def test_text_parts_are_joined(server):
    p, _ = partner_for(server.url)
    server.actions.extend(["parts:Check step |two again."])
    assert p.remark([CHAT], 8) == ["Check step two again."]
    assert len(server.requests) == 1 and p.requests_ok == 1


@pytest.mark.parametrize("odd", ["null", "empty", "refusal:No.", "nomessage", "nochoices"])
def test_reply_without_text_is_retried(server, odd):
    p, _ = partner_for(server.url)
    server.actions.extend([odd, "ok:Now a remark."])
    assert p.remark([CHAT], 8) == ["Now a remark."]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "odd, returned",
    [
        ("null", "content: null"),
        ("empty", "empty content"),
        ("refusal:Not allowed.", "a refusal: 'Not allowed.'"),
        ("nomessage", "message: null"),
        ("nochoices", "no choices"),
    ],
)
def test_reply_without_text_for_good_is_a_missing_remark(server, odd, returned):
    p, _ = partner_for(server.url)  # 3 attempts
    server.actions.extend([odd] * 3)
    (got,) = p.remark([CHAT], 8)
    assert isinstance(got, MissingRemark) and got == ""
    assert got.reason == f"partner server {server.url} returned {returned}"
    assert len(server.requests) == 3 and p.requests_ok == 0


def test_malformed_reply_is_still_a_server_failure(server):
    p, _ = partner_for(server.url)
    server.actions.extend(["malformed"] * 3)
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == (
        f"partner server {server.url} failed after 3 attempts (malformed JSON reply)"
    )


def test_retry_after_is_not_waited_out_after_the_last_attempt(server):
    p, _ = partner_for(server.url, **{"partner.retries": 1})
    server.actions.extend(["429:1", "429:30"])
    t0 = time.perf_counter()
    with pytest.raises(PartnerError, match=r"failed after 2 attempts \(HTTP 429\)$"):
        p.remark([CHAT], 8)
    # waited the first Retry-After (1 s) before the second attempt, not the last one (30 s)
    assert 0.9 < time.perf_counter() - t0 < 10


def test_long_retry_wait_is_announced(server, monkeypatch, capsys):
    from saie_lite.backends import openai_http

    monkeypatch.setattr(openai_http, "NOTE_WAIT", 0.5)
    p, _ = partner_for(server.url, **{"partner.retries": 2})
    server.actions.extend(["429:1", "500", "ok:Fine."])
    assert p.remark([CHAT], 8) == ["Fine."]
    err = capsys.readouterr().err
    # the 1 s Retry-After is announced; the 0.02 s backoff after the 500 is not
    assert err == (f"partner server {server.url}: HTTP 429, trying again in 1 s (attempt 2 of 3)\n")


def test_served_model_asks_the_server_and_retries_like_a_chat_request(server):
    from saie_lite.backends.openai_http import served_model

    _, cfg = partner_for(server.url, **{"partner.model": "embedded"})
    server.get_failures.extend([503, 502])  # a llama-server still loading its model
    notes = []
    assert served_model(cfg.partner, notes.append) == "served-model"
    assert server.gets == 3 and notes == [] and not server.requests


@pytest.mark.parametrize(
    "models, failures, says",
    [
        (
            ["llama3", "qwen2.5"],
            [],
            "serves 2 models (llama3, qwen2.5): pick one with --partner-model",
        ),
        ([], [], "serves 0 models (none): pick one with --partner-model"),
        (
            ["m"],
            [503, 503, 503],
            "did not list its models (HTTP 503, 3 attempts): start the server",
        ),
        (["m"], [401], "refused to list its models (HTTP 401): check the API key variable"),
    ],
)
def test_served_model_needs_a_name_unless_the_server_serves_one(server, models, failures, says):
    from saie_lite.backends.openai_http import served_model

    _, cfg = partner_for(server.url, **{"partner.model": "embedded"})
    server.models = models
    server.get_failures.extend(failures)
    with pytest.raises(UserError) as e:
        served_model(cfg.partner, print)
    assert str(e.value).startswith(f"partner server {server.url} {says}")
    assert not server.requests  # nothing was asked for a remark


def test_a_debate_agent_without_a_model_name_asks_the_server(server):
    from saie_lite.evaluate.agents import build_agents

    _, cfg = partner_for(server.url)
    named, unnamed = build_agents(cfg, ["openai:my-model", "openai:"])
    assert named.model == "my-model" and unnamed.model == "served-model"
    assert server.gets == 1  # only the unnamed one asked


def test_a_server_without_a_model_list_gets_the_name_as_before(server):
    from saie_lite.backends.openai_http import served_model

    _, cfg = partner_for(server.url, **{"partner.model": "embedded"})
    server.models = None  # GET /models: 404
    notes = []
    assert served_model(cfg.partner, notes.append) == "embedded"
    assert notes == [
        f"partner server {server.url} does not list its models (GET /models: HTTP 404): asking "
        "for model 'embedded'; if it needs a name, give --partner-model NAME (partner.model)"
    ]


runner = CliRunner()


def _train_cli(url, run_dir, *extra):
    from saie_lite.cli import app

    args = [
        "train", "--backend", "scripted", "--partner", "openai", "--partner-url", url,
        "--limit", "8", "--run-dir", str(run_dir), "--live", "plain",
        "--set", "partner.backoff=0.01", "--set", "partner.retries=1",
        "--set", "train.batch_size=2", "--set", "method.warmup_fraction=0.25",
        *extra,
    ]  # fmt: skip
    return runner.invoke(app, args)


def test_partner_sending_text_parts_trains_to_the_end(tmp_path):
    server = FaultServer(default="parts:Check the second |step once more.")
    try:
        r = _train_cli(server.url, tmp_path / "run")
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    store = Store(tmp_path / "run" / "saie.sqlite")
    assert store.count("steps") == 4  # 1 warm-up + 3 discussion batches, none skipped
    # no --partner-model: the model the server lists is asked for, not 'embedded', and
    # the run's config names it, so that a resume asks the server no more
    assert {q["body"]["model"] for q in server.requests} == {"served-model"}
    assert config.build(tmp_path / "run" / "config.yaml").partner.model == "served-model"
    assert "partner model: served-model (the one model" in r.output
    remarks = {t for (t,) in store.db.execute("SELECT text FROM turns WHERE role='partner'")}
    assert remarks == {"Check the second step once more."}
    store.close()


def test_partner_returning_null_stops_in_one_line_with_a_checkpoint(tmp_path):
    server = FaultServer(default="null")
    try:
        # even a share of 1 (never stop for some) stops when every remark is missing
        r = _train_cli(server.url, tmp_path / "run", "--set", "partner.max_missing_share=1")
    finally:
        server.close()
    assert r.exit_code == 2
    run = tmp_path / "run"
    assert r.output.strip().splitlines()[-1] == (
        f"error: partner server {server.url} returned content: null for all 4 remarks of "
        "this batch (after 2 attempts each); "
        f"checkpoint saved at update 1; once the server is fixed: saie-lite train --resume {run}"
    )
    assert "Traceback" not in r.output
    assert checkpoint.latest(run).name == "step-000001"


def _one_refusal_run(tmp_path, share: float):
    """Batch 2 (the first discussion batch, 4 remarks asked one at a time): the first
    remark is refused on both attempts; every other remark arrives."""
    server = FaultServer()
    server.actions.extend(["refusal:I will not comment on that.", "refusal:I still will not."])
    cfg = config.build(
        overrides={
            "learner.backend": "scripted",
            "partner.backend": "openai",
            "partner.url": server.url,
            "partner.retries": 1,
            "partner.backoff": 0.01,
            "partner.concurrency": 1,
            "partner.max_missing_share": share,
            "train.batch_size": 2,
            "method.warmup_fraction": 0.0,
        }
    )
    from saie_lite.ui.train_view import PlainView

    out = io.StringIO()
    store = Store(tmp_path / "saie.sqlite")
    learner = ScriptedLearner()
    try:
        summary = train(
            cfg, learner, OpenAIPartner(cfg), gsm8k.load("bundled")[0][:4], store, tmp_path,
            PlainView(out),
        )  # fmt: skip
        return summary, store, learner, out.getvalue(), server
    finally:
        server.close()


def test_one_refused_remark_is_recorded_missing_and_training_goes_on(tmp_path):
    summary, store, learner, out, server = _one_refusal_run(tmp_path, 0.5)
    assert summary["status"] == "finished" and summary["step"] == 2
    assert summary["missing_remarks"] == 1
    reason = f"partner server {server.url} returned a refusal: 'I still will not.'"
    rows = store.db.execute(
        "SELECT example_id, stance, text, missing FROM turns WHERE missing IS NOT NULL"
    ).fetchall()
    assert len(rows) == 1 and rows[0][2] == "" and rows[0][3] == reason
    # the other three discussions of that batch were trained on
    first = [h for h in learner.history if h["call"] == "train_step"][0]
    assert len(first["sequences"]) == 3
    assert (
        f"note: {rows[0][0]} turn 1 ({rows[0][1]}): no remark ({reason}), discussion skipped" in out
    )
    assert "| 1 missing remark eta" in out
    assert "missing remarks: 1 (partner gave no text; those discussions were skipped)" in out
    # the missing remark was not cached: a resumed run would ask for it again
    assert store.count("remark_cache") == 7
    store.close()


def test_missing_share_over_the_limit_stops(tmp_path):
    with pytest.raises(PartnerError) as e:
        _one_refusal_run(tmp_path, 0.2)
    assert "returned a refusal: 'I still will not.' for 1 of 4 remarks of this batch, more " in str(
        e.value
    )
    assert (
        "partner.max_missing_share=0.2 (after 2 attempts each); checkpoint saved at update 0"
        in str(e.value)
    )
    assert checkpoint.latest(tmp_path) is not None


KEY_LINE = (
    "error: config: partner.api_key_env must be the NAME of an environment variable holding "
    "the key (e.g. OPENAI_API_KEY), not the key itself; the value given is not shown or saved"
)


@pytest.mark.parametrize(
    "value", ["sk-proj-Ab12Cd34Ef56Gh78", "gsk_abcdefabcdef1234", "1BAD", "MY-KEY", "has space",
              "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMn"]
)  # fmt: skip
def test_key_pasted_as_variable_name_is_refused_without_echo(tmp_path, value):
    from saie_lite.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"partner:\n  backend: openai\n  api_key_env: '{value}'\n")
    for how in (["--set", f"partner.api_key_env={value}"], ["--recipe", str(recipe)]):
        r = runner.invoke(
            app,
            ["train", "--backend", "scripted", "--partner", "openai", "--partner-url",
             "http://127.0.0.1:9/v1", "--run-dir", str(tmp_path / "run"), *how],
        )  # fmt: skip
        assert r.exit_code == 2
        assert r.output.strip() == KEY_LINE
        assert value not in r.output
        assert not (tmp_path / "run").exists()


def test_ordinary_variable_names_are_accepted():
    for name in ("OPENAI_API_KEY", "my_key", "_K2", "GROQ_API_KEY_2024"):
        assert config.build(overrides={"partner.api_key_env": name}).partner.api_key_env == name


def test_key_value_reaches_no_output_and_no_file(tmp_path, monkeypatch):
    """Train, evaluate with the server as a debate agent, list logs: the key is sent to the
    server and appears nowhere else, neither on the terminal nor under SAIE_LITE_HOME."""
    from saie_lite.cli import app

    secret = "s3cr3t-Value-that-must-stay-in-memory-9137"
    home = tmp_path / "home"
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    monkeypatch.setenv("SAIE_TEST_KEY", secret)
    server = FaultServer(default="ok:Check step two. The answer is 18.")
    common = [
        "--set", f"partner.url={server.url}", "--set", "partner.api_key_env=SAIE_TEST_KEY",
        "--set", "partner.model=test-model", "--set", "partner.backoff=0.01",
    ]  # fmt: skip
    try:
        outputs = []
        r = runner.invoke(
            app,
            ["train", "--backend", "scripted", "--partner", "openai", "--limit", "6",
             "--live", "plain", *common],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
        r = runner.invoke(
            app,
            ["eval", "--backend", "scripted", "--limit", "2", "--strategy", "debate",
             "--agents", "learner,openai:test-model", "--rounds", "1", *common],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
        r = runner.invoke(app, ["logs", "list"])
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
    finally:
        server.close()
    assert all(q["headers"]["Authorization"] == f"Bearer {secret}" for q in server.requests)
    assert len(server.requests) >= 8
    for out in outputs:
        assert secret not in out
    files = [f for f in home.rglob("*") if f.is_file()]
    assert any(f.name == "logs.sqlite" for f in files)
    assert any(f.name == "saie.sqlite" and "runs" in f.parts for f in files)
    assert any(f.name == "summary.json" for f in files)
    for f in files:
        assert secret.encode() not in f.read_bytes(), f
