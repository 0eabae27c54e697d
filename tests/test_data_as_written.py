"""Data read as it is written: chat content as text parts, digits of any script, files
that mix layouts, a worked solution beside a bare answer, targets that state the final
answer, and a --data file that needs no --task."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.tasks import example_chat, get_task
from saie_lite.tasks.custom import NOT_TEXT, describe
from saie_lite.tasks.detect import detect, settle_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own-data"
CSQA = Path(__file__).parent / "data" / "csqa_sample.jsonl"
MMLU = Path(__file__).parent / "data" / "mmlu_sample.jsonl"
runner = CliRunner()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(path, **keys):
    cfg = config.build(
        overrides={"data.task": "custom", **{f"data.{k}": v for k, v in keys.items()}}
    )
    task = get_task(cfg.data)
    examples, skipped = task.load(str(path), "all")
    return task, examples, skipped, cfg.data


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def parts(*texts, kind="text"):
    return [{"type": kind, "text": t} for t in texts]


def solved(i: int) -> dict:
    """A worked solution that ends in prose, not in '#### N'."""
    return {
        "prompt": f"What is {i} + {i}?",
        "completion": f"Adding {i} to itself gives {2 * i}, the sum we wanted.",
        "answer": str(2 * i),
    }


# -- 1. chat content as a list of text parts ---------------------------------------------
def test_chat_content_as_text_parts_is_read(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": parts("Be brief.")},
                {"role": "user", "content": parts("What is 2+2?", "Answer with a number.")},
                {"role": "assistant", "content": parts("2+2=4.", "The answer is 4")},
            ]
        },
        {  # the Responses API names its parts input_text / output_text
            "messages": [
                {"role": "user", "content": parts("What is 3+3?", kind="input_text")},
                {"role": "assistant", "content": parts("The answer is 6", kind="output_text")},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": parts("The answer is 1")},
            ]
        },
    ]
    task, exs, skipped, data = load(write_jsonl(tmp_path / "parts.jsonl", rows))
    # before: both rows skipped as 'empty answer' (and no number check could be chosen)
    assert data.check == "number" and [e.answer for e in exs] == ["4", "6"]
    assert skipped == {NOT_TEXT: 1}  # an image is said to be one, not read without it
    a = exs[0]
    assert a.question == "What is 2+2?\nAnswer with a number."
    assert a.reference == "2+2=4.\nThe answer is 4"
    assert example_chat(task, a) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?\nAnswer with a number."},
    ]


# -- 2. digits of any script ---------------------------------------------------------------
def test_own_data_in_other_digits_compares_by_value(tmp_path):
    rows = [
        {"question": "\u0662 + \u0663\u061f", "answer": "\u0665"},  # Arabic-Indic 5
        {"question": "Twelve?", "answer": "\uff11\uff12"},  # full-width 12
        {"question": "Half of seven?", "answer": "\u0969\u002e\u096b"},  # Devanagari 3.5
    ]
    task, exs, skipped, data = load(write_jsonl(tmp_path / "digits.jsonl", rows))
    assert data.check == "number" and skipped == {}
    assert [e.answer for e in exs] == ["5", "12", "3.5"]
    assert task.score("2 + 3 = 5\n#### 5", exs[0].answer).strict_correct
    assert task.score("#### \u0661\u0662", exs[1].answer).strict_correct  # an answer in them too
    assert not task.score("#### 13", exs[1].answer).strict_correct


# -- 3. a file that mixes layouts -------------------------------------------------------------
def test_a_file_mixing_chat_and_question_rows_reads_every_row(tmp_path):
    chat = {
        "messages": [
            {"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": "The answer is 2"},
        ]
    }
    rows = [chat, {"question": "What is 2+2?", "answer": "#### 4"}] * 3
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    task, exs, skipped, d = load(data)
    # before: every question/answer row was a malformed chat row
    assert skipped == {} and [e.answer for e in exs] == ["2", "4"] * 3
    # a chat file's stray row of neither layout is still one skipped row, not an error
    stray = write_jsonl(tmp_path / "stray.jsonl", [chat, {"text": "hello"}])
    _, (ex,), skipped, _ = load(stray)
    assert ex.answer == "2" and skipped == {"messages is not a list of {role, content}": 1}
    assert [e.context is not None for e in exs[:2]] == [True, False]
    assert "the file mixes both layouts" in describe(d)
    # the settled config reads the file the same way again (a resumed run)
    again = get_task(d).load(str(data), "all")
    assert [e.answer for e in again[0]] == ["2", "4"] * 3
    r = cli("train", "--dry-run", "--data", data, "--max-steps", "1", "--live", "plain",
            "--run-dir", tmp_path / "run")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "malformed" not in r.output and "mixes both layouts" in r.output


# -- 4. a worked solution beside a bare answer ------------------------------------------------
def test_the_worked_solution_is_the_reference_and_the_bare_number_the_final(tmp_path):
    data = write_jsonl(tmp_path / "pca.jsonl", [solved(i) for i in range(1, 6)])
    _, exs, _, d = load(data)
    # before: fields prompt/answer, trained on '2', the solution ignored in silence
    assert (d.answer_field, d.final_field, d.check) == ("completion", "answer", "number")
    assert exs[0].reference.startswith("Adding 1 to itself gives 2") and exs[0].answer == "2"
    assert describe(d) == (
        "data: fields prompt/completion, final answer from answer (completion is the worked "
        "solution and the training target, answer only the short final answer), check number"
    )
    # a field the user names stays theirs
    _, exs, _, d = load(data, answer_field="answer")
    assert (d.answer_field, d.final_field) == ("answer", "") and exs[0].reference == "#### 2"
    # two long fields: the first by name is kept, as before
    rows = [{"prompt": "Why?", "completion": "Because it is so.", "output": "It just is, I say."}]
    _, _, _, d = load(write_jsonl(tmp_path / "two.jsonl", rows))
    assert (d.answer_field, d.final_field) == ("completion", "")


# -- 5. the target states the final answer as strict reads it --------------------------------
def test_targets_end_with_the_final_answer_in_the_strict_form(tmp_path):
    from saie_lite.train.prompts import plain_sequence

    task, exs, _, _ = load(write_jsonl(tmp_path / "pca.jsonl", [solved(i) for i in range(4)]))
    seq = plain_sequence(example_chat(task, exs[3]), exs[3])
    assert seq.target == "Adding 3 to itself gives 6, the sum we wanted.\n#### 6"
    # what the model is trained to write, strict reads (before: a parse failure)
    assert all(task.score(e.reference, e.answer).strict_correct for e in exs)
    # a reference that already states it is left as written
    _, chat_exs, _, _ = load(EXAMPLES / "units-chat.jsonl")
    assert chat_exs[0].reference == "5.5 x 12 = 66. The answer is 66"
    # choice: an explanation gets the letter line
    rows = [{"question": "Largest?", "choices": ["cat", "whale"], "answer": "whale",
             "explanation": "Whales are the largest animals."}]  # fmt: skip
    _, (ex,), _, _ = load(write_jsonl(tmp_path / "mc.jsonl", rows), answer_field="explanation",
                          final_field="answer")  # fmt: skip
    assert ex.reference == "Whales are the largest animals.\nThe answer is (B)."
    # a pattern of the user's, no check, or the user's own answer format: as written
    for keys in ({"check": "regex:=(\\d+)"}, {"check": "none"}, {"answer_format": "'N'"}):
        _, exs, _, _ = load(tmp_path / "pca.jsonl", **keys)
        assert exs[3].reference == "Adding 3 to itself gives 6, the sum we wanted.", keys


def test_a_dry_run_trains_on_targets_that_end_in_the_answer(tmp_path):
    data = write_jsonl(tmp_path / "pca.jsonl", [solved(i) for i in range(1, 9)])
    run = tmp_path / "run"
    r = cli("train", "--dry-run", "--task", "custom", "--data", data, "--mode", "sft",
            "--live", "quiet", "--run-dir", run)  # fmt: skip
    assert r.exit_code == 0, r.output
    import sqlite3

    db = sqlite3.connect(run / "saie.sqlite")
    texts = [t for (t,) in db.execute("SELECT text FROM turns WHERE role = 'target'")]
    db.close()
    # what each update trained on (before: 'Adding 1 to itself gives 2, the sum we wanted.')
    assert len(texts) == 8 and all(t.splitlines()[-1].startswith("#### ") for t in texts), texts


# -- 6. --data without --task --------------------------------------------------------------
@pytest.mark.parametrize(
    "rows,task",
    [
        ([{"question": "Q?", "answer": "so\n#### 3"}] * 3, "gsm8k"),
        # a few broken rows are the preset's to skip and count
        ([{"question": "Q?", "answer": "so\n#### 3"}] * 3 + [{"question": "Q?"}], "gsm8k"),
        ([{"question": "Q?", "answer": "3"}] * 3, "custom"),
        ([{"question": "Q?", "answer": "#### 3", "final": "3"}] * 3, "custom"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "custom"),
        ([{"prompt": "Q?", "completion": "A."}], "custom"),
    ],
    ids=["gsm8k", "gsm8k-with-a-broken-row", "bare-answers", "extra-field", "chat", "prompt"],
)
def test_the_rows_shape_chooses_the_task(rows, task):
    assert detect(rows)[0] == task


def test_preset_files_are_detected_as_their_presets(gsm8k_rows):
    from saie_lite.tasks.common import load_rows

    assert detect(gsm8k_rows)[0] == "gsm8k"
    assert detect(load_rows(str(CSQA), "all", None, None))[0] == "commonsense_qa"
    assert detect(load_rows(str(MMLU), "all", None, None))[0] == "mmlu"


def test_train_on_a_data_file_without_a_task(tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", [solved(i) for i in range(1, 9)])
    run = tmp_path / "run"
    r = cli("train", "--dry-run", "--data", data, "--max-steps", "1", "--live", "plain",
            "--run-dir", run)  # fmt: skip
    # before: "no usable GSM8K rows (skipped: {'missing question': 8})"
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if "no --task given" in ln]
    assert notes == [
        "note: no --task given: the rows have your own layout (fields: prompt, completion, "
        "answer): task custom, check chosen from the rows (--task gsm8k | commonsense_qa | "
        "mmlu reads a preset's layout)"
    ]
    saved = config.load_yaml(run / "config.yaml")["data"]
    assert (saved["task"], saved["check"], saved["answer_field"]) == ("custom", "number",
                                                                      "completion")  # fmt: skip
    # the saved config names the task: a resume reads the same way, with no new choice
    r = cli("train", "--resume", run, "--max-steps", "2", "--live", "plain")
    assert r.exit_code == 0, r.output
    assert "no --task given" not in r.output


def test_a_gsm8k_file_without_a_task_is_the_preset(tmp_path, gsm8k_rows):
    data = write_jsonl(tmp_path / "g.jsonl", gsm8k_rows[:6])
    r = cli("train", "--dry-run", "--data", data, "--max-steps", "1", "--live", "plain",
            "--run-dir", tmp_path / "run")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "answers ending in '#### N': task gsm8k (--task custom reads it" in r.output
    assert config.load_yaml(tmp_path / "run" / "config.yaml")["data"]["task"] == "gsm8k"


def test_eval_and_debate_on_data_files_without_a_task(tmp_path):
    out = tmp_path / "ev"
    r = cli("eval", "--backend", "scripted", "--data", CSQA, "--split", "all", "--out", out)
    assert r.exit_code == 0, r.output
    assert "task commonsense_qa" in r.output
    assert json.loads((out / "summary.json").read_text())["n"] >= 1
    r = cli("debate", "--file", EXAMPLES / "units.csv", "--agents", "scripted:a,scripted:b",
            "--rounds", "0", "--live", "plain")  # fmt: skip
    # before: the gsm8k preset refused the file ('missing answer' had no '#### N')
    assert r.exit_code == 0, r.output
    assert "task custom" in r.output and r.output.count("reference answer: ") == 6


def test_a_task_given_stays_strict(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])  # fmt: skip
    for given in (["--task", "gsm8k"], ["--set", "data.task=gsm8k"]):
        r = cli("train", "--dry-run", "--data", chat, *given, "--run-dir", tmp_path / "run")
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: no usable GSM8K rows in {str(chat)!r} (skipped: {{'missing question': 1}})"
            ": to read your own layout, give --task custom"
        )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  task: gsm8k\n  path: {chat}\n")
    cfg = config.build(recipe)
    assert settle_task(cfg) is None and cfg.data.task == "gsm8k"
    recipe.write_text(f"data:\n  path: {chat}\n")
    cfg = config.build(recipe)
    assert "task custom" in settle_task(cfg) and cfg.data.task == "custom"
    # the bundled rows and hub names keep the default preset; a hand-made config too
    assert settle_task(config.build()) is None
    assert settle_task(config.build(overrides={"data.path": "openai/gsm8k"})) is None
    hand = config.Config()
    hand.data.path = str(chat)
    assert settle_task(hand) is None and hand.data.task == "gsm8k"


def test_a_broken_file_without_a_task_is_still_one_line(tmp_path):
    missing = tmp_path / "nope.jsonl"
    r = cli("train", "--dry-run", "--data", missing, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2 and r.output.strip().startswith("error: data file not found:")
    with pytest.raises(UserError, match="no usable question/answer rows"):
        cfg = config.build(overrides={"data.path": str(write_jsonl(tmp_path / "b.jsonl", [
            {"question": "q", "answer": " "}]))})  # fmt: skip
        settle_task(cfg)
        get_task(cfg.data).load(cfg.data.path, "all")
