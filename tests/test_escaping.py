"""Text from outside never drives the terminal: questions, answers, remarks, names and
what is read back from the stores print as written, in every view and export.

Each test feeds data holding an OSC window title, a clear-screen CSI, a C1 CSI byte and
Rich markup (a style and a live file link), and checks that no escape FROM THE DATA
reaches the output. Rich's own styling escapes are allowed: the checks look for the
data's sequences behind an ESC (or a raw C1 byte), and for the markup text verbatim."""

from __future__ import annotations

import io
import json
import re

import pytest
from typer.testing import CliRunner

from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.protocols import Example
from saie_lite.registry import register_learner

MARKUP = "[bold red]x[/] [link=file:///etc/passwd]y[/link]"
PAYLOAD = f"\x1b]0;pwned\x07 \x1b[2J \x9b {MARKUP}"


def assert_inert(out: str, markup_shown: bool = True) -> None:
    """No escape sequence of the data's reached ``out``; its markup is there as text."""
    assert "\x1b]" not in out, "an OSC sequence (window title, hyperlink) reached the output"
    assert "\x1b[2J" not in out, "the data's clear-screen reached the output"
    assert "\x9b" not in out, "a raw C1 CSI byte reached the output"
    assert "\x07" not in out
    assert not re.search("\x1b[^\\[]", out), "an escape that Rich's styling never writes"
    if markup_shown:
        # Rich may wrap long lines: compare with the layout's whitespace taken out
        flat = re.sub(r"\x1b\[[0-9;]*m|[\s│|]", "", out)
        assert re.sub(r"\s", "", MARKUP) in flat, "the data's markup was rendered, not shown"
        assert "\\x1b]0;pwned" in flat  # the escape is shown in a visible form


def rich_console():
    from rich.console import Console

    buf = io.StringIO()
    return Console(force_terminal=True, file=buf, width=200, color_system="truecolor"), buf


# -- debate -----------------------------------------------------------------------------
def test_rich_debate_view_shows_data_as_written():
    from saie_lite.ui.debate_view import RichDebateView

    console, buf = rich_console()
    v = RichDebateView(console)
    v.note(f"note from {PAYLOAD}")
    v.begin(f"Q {PAYLOAD} and a lone closing tag [/]", [f"name {PAYLOAD}", "b"])
    v.begin_round(0)
    v.update(0, f"streaming {PAYLOAD}")
    v.end_turn(0, f"turn {PAYLOAD}", f"key {PAYLOAD}")
    v.end_turn(1, "#### 4", "4")
    v.end_round()
    v.verdict([f"key {PAYLOAD}", "4"], f"final {PAYLOAD}", 7)
    out = buf.getvalue()
    assert_inert(out)
    assert "[/]" in out and "Final answer:" in out


def test_plain_debate_view_shows_data_as_written():
    from saie_lite.ui.debate_view import PlainDebateView

    buf = io.StringIO()
    v = PlainDebateView(buf)
    v.begin(f"Q {PAYLOAD}", [f"name {PAYLOAD}"])
    v.begin_round(0)
    v.end_turn(0, f"turn {PAYLOAD}", f"key {PAYLOAD}")
    v.verdict([f"key {PAYLOAD}"], f"final {PAYLOAD}", 1)
    assert_inert(buf.getvalue())


@pytest.fixture
def evil_backend():
    """A scripted learner whose every turn holds the payload, and extracts to it."""
    register_learner("evil", lambda cfg: ScriptedLearner(default=f"{PAYLOAD}\n#### 4"))


@pytest.mark.parametrize("live", ["rich", "plain"])
def test_debate_command_shows_question_and_turns_as_written(evil_backend, live):
    # A question with a lone closing tag was a MarkupError traceback in the Rich view.
    q = f"Q {PAYLOAD} closing [/] alone"
    r = CliRunner().invoke(
        app,
        ["debate", "-q", q, "--agents", "evil:a,evil:b", "--live", live],
        env={"TTY_COMPATIBLE": "1", "COLUMNS": "200"},
        color=True,
    )
    assert r.exit_code == 0, r.output
    assert "Final answer:" in r.output
    assert_inert(r.output)


def test_debate_reference_answer_is_shown_as_written(evil_backend, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": f"4 {PAYLOAD}"}) + "\n")
    args = ["--file", str(data), "--task", "custom", "--check", "exact", "--rounds", "0"]
    r = CliRunner().invoke(
        app, ["debate", *args, "--agents", "evil:a", "--live", "plain"], color=True
    )
    assert r.exit_code == 0, r.output
    assert "reference answer:" in r.output
    assert_inert(r.output)


def test_debate_question_over_the_context_gets_the_train_and_eval_note(tmp_path):
    """A question past learner.max_seq_len is clipped before any agent sees it, with the
    note train and eval give (it was fed whole, without a word)."""
    long_q = "How many words? " + "word " * 2000
    r = CliRunner().invoke(
        app,
        [
            "debate",
            "-q",
            long_q,
            "--agents",
            "scripted:a",
            "--rounds",
            "0",
            "--live",
            "plain",
            "--set",
            "learner.max_seq_len=256",
        ],
    )
    assert r.exit_code == 0, r.output
    assert re.search(
        r"note: question 1: question needs \d+ tokens, over max_seq_len=256, clipped", r.output
    ), r.output[-600:]
    did = int(re.search(r"Saved as debate (\d+)", r.output).group(1))
    from saie_lite.evaluate.logs import get_debate

    saved = get_debate(did)["question"]
    assert len(saved.split()) < 256 < len(long_q.split())  # the debate ran on the clipped one


def test_ctrl_c_mid_answer_stops_the_live_view(monkeypatch, capsys):
    """Ctrl-C while an agent streams: the Live display is stopped, so the cursor it hid
    is shown again before the command ends (130)."""

    class Interrupted(ScriptedLearner):
        def stream(self, chat, max_new, temperature):
            yield "thinking"
            raise KeyboardInterrupt

    register_learner("interrupted", lambda cfg: Interrupted())
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    r = CliRunner().invoke(
        app, ["debate", "-q", "2+2?", "--agents", "interrupted:a", "--live", "rich"]
    )
    assert r.exit_code == 130, r.output
    hide, show = "\x1b[?25l", "\x1b[?25h"
    assert hide in r.output, "the live view never started: the test proves nothing"
    assert r.output.rindex(show) > r.output.rindex(hide), "the cursor was left hidden"


# -- logs ---------------------------------------------------------------------------------
def _saved_debate() -> int:
    from saie_lite.places import logs_db
    from saie_lite.store import Store

    store = Store(logs_db())
    try:
        turns = [{"round": 0, "agent": 0, "text": f"turn {PAYLOAD}", "key": f"k {PAYLOAD}"}]
        return store.add_debate(f"Q {PAYLOAD}", [f"name {PAYLOAD}"], 0, turns, f"f {PAYLOAD}")
    finally:
        store.close()


def test_logs_list_show_and_export_show_stored_text_as_written(tmp_path):
    did = _saved_debate()
    runner = CliRunner()
    for args in (
        ["logs", "list"],
        ["logs", "show", str(did)],
        ["logs", "export", str(did), "--format", "md"],
    ):
        r = runner.invoke(app, args, color=True)  # color: click strips no escape for us
        assert r.exit_code == 0, (args, r.output)
        # 'logs list' cuts the question to one short line: the markup is partly there
        assert_inert(r.output, markup_shown=args[1] != "list")
    r = runner.invoke(app, ["logs", "export", str(did), "--format", "json"], color=True)
    assert r.exit_code == 0, r.output
    assert_inert(r.output, markup_shown=False)
    assert json.loads(r.output)["question"] == f"Q {PAYLOAD}"  # the JSON keeps the value
    out = tmp_path / "t.md"
    r = runner.invoke(app, ["logs", "export", str(did), "--format", "md", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert_inert(out.read_text())


# -- train, eval and ablate views ---------------------------------------------------------
def _exchange() -> dict:
    ex = Example(id=f"id {PAYLOAD}", question=f"Q {PAYLOAD}", reference="r", answer="4")
    return {
        "example": ex,
        "phase": "discussion",
        "answer": f"answer {PAYLOAD}",
        "correct": False,
        "remarks": [("supportive", f"remark {PAYLOAD}", False)],
        "target": f"target {PAYLOAD}",
        "diagnostics": [],
    }


def _train_events(view) -> None:
    info = {
        "mode": "saie",
        "learner": f"learner {PAYLOAD}",
        "partner": f"partner {PAYLOAD}",
        "examples": 1,
        "total": 2,
        "done": 0,
        "run_dir": f"/runs/{PAYLOAD}",
    }
    view.on_begin(info)
    view.on_exchange(_exchange())
    view.on_event(f"note {PAYLOAD}")
    row = {"step": 1, "batches_done": 1, "total": 2, "phase": "discussion", "round": 0}
    view.on_step({**row, "loss": 1.0, "t_generate": 0.1, "t_remark": 0.1, "t_update": 0.1})
    seconds = {"generate": 1.0, "remark": 1.0, "update": 1.0}
    for status in ("finished", "stopped"):
        view.on_end(
            {
                "status": status,
                "seconds": seconds,
                "step": 1,
                "batches_done": 1,
                "total": 2,
                "run_dir": f"/runs/{PAYLOAD}",
                "next": [("evaluate", f"saie-lite eval --run /runs/{PAYLOAD}")],
            }
        )


def test_rich_train_view_shows_data_as_written():
    from saie_lite.ui.train_view import RichView

    console, buf = rich_console()
    _train_events(RichView(console))
    assert_inert(buf.getvalue())


def test_plain_train_view_shows_data_as_written():
    from saie_lite.ui.train_view import PlainView

    buf = io.StringIO()
    _train_events(PlainView(buf))
    assert_inert(buf.getvalue(), markup_shown=False)  # answers are shown as repr, cut


def test_eval_view_and_compare_show_data_as_written(capsys, tmp_path):
    from saie_lite.evaluate.evaluation import summarize
    from saie_lite.ui.eval_view import EvalView, print_compare

    v = EvalView(rich=False)
    v.note(f"note {PAYLOAD}")
    v.summary(summarize([], {"name": f"name {PAYLOAD}", "status": "finished"}), tmp_path)
    side = {"n": 1, "a_correct": 1, "b_correct": 0, "diff": -1.0, "diff_ci": [-1.0, 0.0]}
    side.update(only_a=1, only_b=0, p_value=1.0, verdict="no difference shown")
    c = {"n": 1, "strict": side, "flexible": side}
    print_compare(f"A {PAYLOAD}", f"B {PAYLOAD}", {}, {}, c)
    assert_inert(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["rich", "plain"])
def test_ablate_views_show_data_as_written(kind):
    from saie_lite.ui.ablate_view import PlainAblateView, RichAblateView

    if kind == "rich":
        console, buf = rich_console()
        v = RichAblateView(console)
    else:
        buf = io.StringIO()
        v = PlainAblateView(buf)
    v.start(["plain", "eval"], 0)
    v.advance(1, f"trained {PAYLOAD}")
    v.note(f"note {PAYLOAD}")
    v.advance(1, f"evaluated {PAYLOAD}")
    v.finish(f"table {PAYLOAD}")
    if kind == "rich":
        v.bar.refresh()
    assert_inert(buf.getvalue())


# -- the eval progress line and the summary agree -----------------------------------------
def test_eval_progress_counts_both_readings_like_the_summary(tmp_path):
    """A learner right only by the flexible reading on some items: the progress lines
    give the strict and the flexible count, and they add up to the summary's figures
    (it said '0 right' beside 'flexible accuracy 12.5%')."""
    from saie_lite.paths import bundled_data
    from saie_lite.tasks.numbers import extract_strict

    rows = [json.loads(x) for x in bundled_data("gsm8k_sample.jsonl").read_text().splitlines()]
    gold = {r["question"]: extract_strict(r["answer"]) for r in rows}

    class Mixed(ScriptedLearner):
        """Right in the task's format on every third item, right only in free text
        ('so it is N') on the others."""

        def generate(self, chats, max_new_tokens, temperature=0.0):
            out = []
            for chat in chats:
                q = next(q for q in gold if q in chat[-1]["content"])
                self.step += 1
                out.append(f"#### {gold[q]}" if self.step % 3 == 0 else f"so it is {gold[q]}")
            return out

    register_learner("mixed", lambda cfg: Mixed())
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        app,
        ["eval", "--backend", "mixed", "--limit", "8", "--batch-size", "3", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    counts = re.findall(
        r"items \d+/8 \(\+\d+, (\d+) strict right, (\d+) flexible right\)", r.output
    )
    assert counts, r.output
    strict = sum(int(a) for a, _ in counts)
    flexible = sum(int(b) for _, b in counts)
    assert (strict, flexible) == (s["strict"]["correct"], s["flexible"]["correct"])
    assert 0 < strict < flexible  # the case that looked contradictory
    assert f"strict   accuracy {100 * strict / 8:.1f}%" in r.output
    assert f"flexible accuracy {100 * flexible / 8:.1f}%" in r.output


def test_an_error_line_quoting_outside_text_cannot_drive_the_terminal(tmp_path):
    """A refusal quotes what it refuses (here a recipe path holding an escape): the line
    shows it, written out, with no ESC byte from it."""
    from typer.testing import CliRunner

    from saie_lite.cli import app

    bad = tmp_path / "r\x1b]0;pwned\x07.yaml"
    r = CliRunner().invoke(app, ["train", "--dry-run", "--recipe", str(bad)])
    assert r.exit_code == 2
    assert "\x1b]0;pwned" not in r.output and "\\x1b]0;pwned\\x07" in r.output
