"""Your own data (data.task: custom): every format, every check, every bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.tasks import example_chat, get_task
from saie_lite.tasks.checks import make_check

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own-data"
runner = CliRunner()


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load(path, split="all", **keys):
    cfg = config.build(
        overrides={"data.task": "custom", **{f"data.{k}": v for k, v in keys.items()}}
    )
    task = get_task(cfg.data)
    examples, skipped = task.load(str(path), split)
    return task, examples, skipped, cfg.data


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- formats --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "row,question,reference",
    [
        ({"question": "Q1", "answer": "A1"}, "Q1", "A1"),
        ({"prompt": "Q1", "completion": "A1"}, "Q1", "A1"),
        ({"input": "Q1", "output": "A1"}, "Q1", "A1"),
        ({"instruction": "Do it", "input": "on this", "output": "A1"}, "Do it\n\non this", "A1"),
        ({"instruction": "Do it", "input": "", "output": "A1"}, "Do it", "A1"),
    ],
    ids=[
        "question/answer",
        "prompt/completion",
        "input/output",
        "instruction+input",
        "empty input",
    ],
)
def test_default_field_names(tmp_path, row, question, reference):
    _, (ex,), _, _ = load(write_jsonl(tmp_path / "d.jsonl", [row]))
    # a bare short answer is trained as the line the exact check's strict reading reads
    assert (ex.question, ex.reference, ex.id) == (question, f"The answer is {reference}", "row-0")


def test_mapped_fields_final_field_and_ids(tmp_path):
    rows = [{"q": "How far?", "sol": "Long story.", "short": "12 km", "id": "x7"}]
    task, (ex,), _, data = load(
        write_jsonl(tmp_path / "d.jsonl", rows),
        question_field="q",
        answer_field="sol",
        final_field="short",
    )
    assert (ex.id, ex.question, ex.reference, ex.answer) == (
        "x7",
        "How far?",
        "Long story.\nThe answer is 12 km",  # the final answer stated as strict reads it
        "12 km",
    )
    assert data.check == "exact"  # short finals


def test_json_array_csv_and_parquet(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(rows))
    _, exs, _, data = load(arr)
    assert [e.answer for e in exs] == ["0", "2", "4", "6"] and data.check == "number"

    import datasets

    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    assert [e.answer for e in load(pq)[1]] == ["0", "2", "4", "6"]

    csv = tmp_path / "d.csv"
    csv.write_text('question,answer\n"Code, please?",007\nNext?,"a, b"\n')
    _, exs, _, data = load(csv)
    # every column is text: '007' stays '007' (no float), quoted commas stay inside
    assert [(e.question, e.reference) for e in exs] == [
        ("Code, please?", "The answer is 007"),
        ("Next?", "The answer is a, b"),
    ]


def test_chat_format(tmp_path):
    sys_turn = {"role": "system", "content": "Be brief."}
    rows = [
        {
            "messages": [
                sys_turn,
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "Another?"},
                {"role": "assistant", "content": "Blue."},
            ]
        },
    ]
    task, (a, b), skipped, data = load(write_jsonl(tmp_path / "c.jsonl", rows), check="exact")
    assert data.format == "chat" and skipped == {}
    assert a.question == "2+2?" and a.reference == "The answer is 4" and a.context[0] == sys_turn
    assert example_chat(task, a) == [sys_turn, {"role": "user", "content": "2+2?"}]
    # earlier turns are the question's context; no system turn: ours goes first
    assert b.question == "Another?" and b.reference == "The answer is Blue." and b.answer == "blue"
    assert [t["role"] for t in b.context] == ["system", "user", "assistant", "user"]
    assert b.context[0]["content"] == task.system() and b.context[2]["content"] == "Red."


def test_example_files_and_auto_checks():
    picks = {
        "units.jsonl": ("number", "fields"),
        "units-freeform.jsonl": ("none", "fields"),
        "units-chat.jsonl": ("number", "chat"),
        "units.csv": ("exact", "fields"),
    }
    for name, (check, fmt) in picks.items():
        _, exs, skipped, data = load(EXAMPLES / name)
        assert (data.check, data.format, skipped) == (check, fmt, {}), name
        assert len(exs) >= 6
    _, exs, _, data = load(EXAMPLES / "units.jsonl")
    assert data.final_field == "final" and exs[0].answer == "1200"


def test_choice_rows(tmp_path):
    rows = [
        {"question": "Largest?", "choices": ["cat", "whale", "ant"], "answer": "whale"},
        {"question": "Smallest?", "choices": ["cat", "whale", "ant"], "answer": 2},
        {
            "question": "Pet?",
            "choices": {"label": ["X", "Y"], "text": ["cat", "rock"]},
            "answer": "X",
        },
        {"question": "Bad?", "choices": ["a", "b"], "answer": "zebra"},
    ]
    task, exs, skipped, data = load(write_jsonl(tmp_path / "m.jsonl", rows))
    assert data.check == "choice" and [e.answer for e in exs] == ["B", "C", "X"]
    assert "(B) whale" in exs[0].question and exs[0].reference == "The answer is (B) whale."
    assert skipped == {"answer is not one of the choices (label, index or text)": 1}
    assert task.is_correct("The answer is (B)", "B") and not task.is_correct("(A)", "B")


# -- checks -------------------------------------------------------------------------
# (check, gold text, reply, strict correct, flexible correct)
CHECKS = [
    ("number", "#### 1,200", "so 1200 minutes\n#### 1200", True, True),
    ("number", "1200", "about 1,200.00 minutes", False, True),
    ("number", "-3", "12 - 3 = 9", False, False),
    ("choice", "B", "I'd say (B).", True, True),
    ("choice", "B", "probably B", False, True),
    ("exact", "The Eiffel Tower", "The answer is: eiffel tower!", True, True),
    ("exact", "Paris", "I think so.\nParis", False, True),
    ("exact", "Paris", "The answer is Paris, France", False, False),
    ("contains", "a mile", "The answer is a mile, clearly.", True, True),
    ("contains", "mile", "The answer is miles", False, False),  # whole words only
    ("contains", "mile", "One mile is longer.", False, True),
    ("regex:ANSWER=(\\w+)", "ANSWER=blue", "hmm ANSWER=red then ANSWER=Blue", True, True),
    ("regex:ANSWER=(\\w+)", "blue", "blue, I guess", False, False),
    ("none", "anything", "anything", False, False),
]


@pytest.mark.parametrize("spec,final,reply,strict,flexible", CHECKS)
def test_checks(spec, final, reply, strict, flexible):
    check = make_check(spec)
    gold = check.gold(final)
    s = check.score(reply, gold)
    assert (s.strict_correct, s.flexible_correct) == (strict, flexible)


def test_none_check_has_no_mark():
    check = make_check("none")
    assert check.is_correct("x", "x") is None and not check.checked
    assert check.score("x", "x").strict is None


def test_number_check_never_stops_text_answers_early():
    assert make_check("exact").answer_end("The answer is simple:\nfirst") is None
    assert make_check("number").answer_end("#### 5\n") == 6


# -- bad input: one line each -------------------------------------------------------
def test_rows_skipped_and_counted_by_reason(tmp_path):
    rows = [
        {"question": "ok", "answer": "fine"},
        {"question": "no answer here"},
        {"answer": "no question"},
        {"question": "blank", "answer": "  "},
        {"question": "", "answer": "x"},
        {"question": "nested", "answer": {"text": ["x"]}},
    ]
    _, exs, skipped, _ = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(exs) == 1
    assert skipped == {
        "missing answer": 1,
        "missing question": 1,
        "empty answer": 1,
        "empty question": 1,
        "answer is not text (a list or an object)": 1,
    }


def test_chat_rows_skipped_and_counted(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        {"messages": "hello"},
    ]
    _, exs, skipped, _ = load(write_jsonl(tmp_path / "c.jsonl", rows), check="exact")
    assert len(exs) == 1
    assert skipped == {
        "messages without an assistant turn": 1,
        "messages without a user turn before the answer": 1,
        "empty answer": 1,
        "messages is not a list of {role, content}": 1,
    }


def _train_error(tmp_path, data, *extra):
    r = cli(
        "train",
        "--dry-run",
        "--task",
        "custom",
        "--data",
        data,
        "--run-dir",
        tmp_path / "run",
        *extra,
    )
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "run").exists()  # nothing written before the data is known good
    return r.output.strip()


def test_bad_input_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert _train_error(tmp_path, empty) == f"error: no rows in {str(empty)!r}: the file is empty"

    odd = write_jsonl(tmp_path / "odd.jsonl", [{"q": "x", "a": "y"}])
    assert _train_error(tmp_path, odd) == (
        f"error: no question field in {odd!r} (fields: q, a): set --set data.question_field=NAME"
    )
    assert _train_error(tmp_path, odd, "--set", "data.question_field=q") == (
        f"error: no answer field in {odd!r} (fields: q, a): set --set data.answer_field=NAME"
    )
    assert _train_error(tmp_path, odd, "--set", "data.question_field=question") == (
        f"error: data.question_field 'question' is not a field of {odd!r} (fields: q, a): "
        "set --set data.question_field=NAME"
    )

    blank = write_jsonl(tmp_path / "blank.jsonl", [{"question": "x", "answer": ""}] * 3)
    assert _train_error(tmp_path, blank) == (
        f"error: no usable question/answer rows in {blank!r} (skipped: {{'empty answer': 3}})"
    )

    solo = write_jsonl(tmp_path / "solo.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert _train_error(tmp_path, solo) == (
        f"error: no usable chat rows in {solo!r} (skipped: {{'messages without an assistant turn': 1}})"
    )

    broken = tmp_path / "broken.csv"
    broken.write_text('question,answer\n"What is 1+1?,2\nfoo,3\n')
    assert _train_error(tmp_path, broken) == (
        "error: CSV broken.csv is broken near line 3: unexpected end of data (is a quote left open?)"
    )


@pytest.mark.parametrize(
    "check,line",
    [
        (
            "regex:(unclosed",
            "error: config: data.check regex '(unclosed' does not compile: "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            "regex:Answer: \\w+",
            "error: config: data.check regex 'Answer: \\\\w+' has no group: put the answer in "
            "parentheses, e.g. 'regex:Answer: (\\w+)'",
        ),
        (
            "fuzzy",
            "error: config: data.check 'fuzzy' unknown; known: auto, number, choice, exact, "
            "contains, none, regex:PATTERN",
        ),
    ],
)
def test_bad_check_is_one_line(tmp_path, check, line):
    assert _train_error(tmp_path, EXAMPLES / "units.jsonl", "--check", check) == line


def test_preset_refuses_own_data_keys(tmp_path):
    r = cli("train", "--dry-run", "--check", "exact", "--run-dir", tmp_path / "run")
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: config: data.check read your own data: add --set data.task=custom "
        "(the gsm8k preset has its own fields and check)"
    )


def test_chat_turn_longer_than_context_follows_the_policy():
    from saie_lite.protocols import Example
    from saie_lite.train.context import fit_chat_bases

    long_turn = " ".join(["word"] * 400)
    ex = Example("c1", "q", "short answer", "x", context=[{"role": "user", "content": long_turn}])
    ok = Example("c2", "q", "fine", "x", context=[{"role": "user", "content": "q"}])
    bases = [list(ex.context), list(ok.context)]
    for policy, kept, note in [
        ("truncate", ["c1", "c2"], "c1: chat turns clipped to fit max_seq_len=128"),
        ("skip", ["c2"], "c1: chat turns over max_seq_len=128, skipped"),
    ]:
        cfg = config.build(
            overrides={
                "learner.max_seq_len": 128,
                "learner.max_new_tokens": 32,
                "method.context_policy": policy,
            }
        )
        exs, chats, notes = fit_chat_bases(ScriptedLearner(), [ex, ok], bases, cfg)
        assert [e.id for e in exs] == kept and notes == [note]
        assert all(ScriptedLearner().count_tokens(c) + 32 <= 128 for c in chats)
    with pytest.raises(UserError, match="every example is longer than learner.max_seq_len=128"):
        fit_chat_bases(ScriptedLearner(), [ex], bases[:1], cfg)


# -- every command on every format ----------------------------------------------------
@pytest.mark.parametrize(
    "name,check",
    [
        ("units.jsonl", "number"),
        ("units-chat.jsonl", "number"),
        ("units.csv", "exact"),
        ("units.csv", "contains"),
        ("units-freeform.jsonl", "none"),
    ],
)
def test_train_and_eval_dry(tmp_path, name, check):
    data = EXAMPLES / name
    r = cli(
        "train",
        "--dry-run",
        "--task",
        "custom",
        "--check",
        check,
        "--data",
        data,
        "--limit",
        "4",
        "--live",
        "plain",
        "--run-dir",
        tmp_path / "run",
    )
    assert r.exit_code == 0, r.output
    assert f"check {check}" in r.output
    saved = config.load_yaml(tmp_path / "run" / "config.yaml")["data"]
    assert saved["check"] == check and saved["format"] in ("fields", "chat")
    if check == "none":
        assert "(RIGHT)" not in r.output and "(WRONG)" not in r.output
    else:
        assert "learner (WRONG)" in r.output
    r = cli(
        "eval",
        "--backend",
        "scripted",
        "--task",
        "custom",
        "--check",
        check,
        "--data",
        data,
        "--split",
        "dev",
        "--out",
        tmp_path / "ev",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n"] >= 1 and summary["settings"]["check"] == check
    if check == "none":
        assert "no answer check (data.check: none)" in r.output and " right)" not in r.output
    else:
        assert " right)" in r.output


def test_eval_dev_nodev_split_on_own_data():
    _, dev, _, _ = load(EXAMPLES / "units.jsonl", split="dev")
    _, rest, _, _ = load(EXAMPLES / "units.jsonl", split="nodev")
    assert len(dev) + len(rest) == 24 and not {e.question for e in dev} & {e.question for e in rest}


def test_debate_file_of_data(tmp_path):
    r = cli(
        "debate",
        "--file",
        EXAMPLES / "units.csv",
        "--task",
        "custom",
        "--check",
        "contains",
        "--agents",
        "scripted:a,scripted:b",
        "--rounds",
        "0",
        "--live",
        "plain",
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("reference answer: ") == 6


def test_recipe_lists_every_data_key_and_runs(tmp_path, monkeypatch):
    import dataclasses

    root = EXAMPLES.parents[1]
    recipe = root / "recipes" / "own-data.yaml"
    keys = set(config.load_yaml(recipe)["data"])
    assert keys == {f.name for f in dataclasses.fields(config.DataConfig)}
    monkeypatch.chdir(root)  # the recipe names its example file relative to the checkout
    r = cli(
        "train", "--recipe", recipe, "--dry-run", "--live", "plain", "--run-dir", tmp_path / "run"
    )
    assert r.exit_code == 0, r.output
    assert "data: fields question/answer, final answer from final, check number" in r.output


def test_partner_is_told_the_checked_final_answer():
    from saie_lite.tasks import gsm8k
    from saie_lite.train.batch import partner_final
    from saie_lite.train.prompts import partner_chat

    task, exs, _, _ = load(EXAMPLES / "units.jsonl")  # long answers plus a 'final' field
    # the reference now ends with '#### 1200': the partner reads the final answer there
    assert exs[0].reference.endswith("1200 minutes.\n#### 1200")
    assert partner_final(task, exs[0]) is None
    # the user's own answer format leaves the reference as written: the partner is told
    task, exs, _, _ = load(EXAMPLES / "units.jsonl", answer_format="'Result: <n>'")
    assert exs[0].reference.endswith("1200 minutes.") and partner_final(task, exs[0]) == "1200"
    chat = partner_chat(exs[0], ["It is 20.\n#### 20"], "adversarial", True, "1200")
    assert "Correct final answer: 1200" in chat[1]["content"]
    chat_task, chat_exs, _, _ = load(EXAMPLES / "units-chat.jsonl")  # ends 'The answer is N'
    assert partner_final(chat_task, chat_exs[0]) is None
    none_task, none_exs, _, _ = load(EXAMPLES / "units-freeform.jsonl")
    assert partner_final(none_task, none_exs[0]) is None
    ex = gsm8k.load("bundled")[0][0]
    assert partner_final(gsm8k, ex) is None  # presets: prompts unchanged


def test_choice_reading_is_fast_on_adversarial_input():
    import time

    text = "answer is" + " " * 100_000 + ":" + "*" * 50_000
    t0 = time.perf_counter()
    for spec in ("choice", "exact", "contains"):
        check = make_check(spec)
        check.score(text, "b"), check.answer_end(text)
    # milliseconds when linear; a backtracking pattern takes minutes on 100k characters,
    # so a generous bound still catches it on a busy machine
    assert time.perf_counter() - t0 < 10.0


def test_presets_read_the_same_through_the_own_data_path():
    """GSM8K is the question/answer field map plus the number check; CommonsenseQA the
    answerKey/choices map plus the choice check: read as own data, the same golds."""
    from saie_lite.paths import bundled_data
    from saie_lite.tasks import commonsense_qa, gsm8k

    preset = gsm8k.load("bundled")[0]
    task, own, skipped, data = load(bundled_data("gsm8k_sample.jsonl"))
    assert (data.check, skipped) == ("number", {})
    assert [e.answer for e in own] == [e.answer for e in preset]
    for reply in ("so 5\n#### 1,234.00", f"The answer is {preset[0].answer}", "no idea"):
        assert task.score(reply, own[0].answer) == gsm8k.score(reply, preset[0].answer)

    csqa = Path(__file__).parent / "data" / "csqa_sample.jsonl"
    preset = commonsense_qa.load(str(csqa))[0]
    _, own, _, data = load(csqa, answer_field="answerKey")
    assert data.check == "choice"
    assert [(e.question, e.answer) for e in own] == [(e.question, e.answer) for e in preset]


def test_hub_name_goes_to_datasets_with_its_config(monkeypatch):
    import datasets

    seen = {}

    def fake(path, name=None, split=None, **kw):
        seen.update(path=path, name=name, split=split)
        return [{"prompt": "Hi?", "completion": "Hello."}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    _, (ex,), _, data = load("someone/chats", split="train", hub_config="v2")
    assert seen == {"path": "someone/chats", "name": "v2", "split": "train"}
    assert (ex.question, ex.reference, data.check) == ("Hi?", "The answer is Hello.", "exact")


def test_local_files_refuse_unknown_splits_types_and_directories(tmp_path, monkeypatch):
    """An existing file is never looked up on the hub; a split a local file cannot have
    is refused, not read as every row."""
    from saie_lite.tasks.common import load_rows, splits_overlap

    good = tmp_path / "qa.jsonl"
    good.write_text('{"question": "q", "answer": "1"}\n')
    assert len(load_rows(str(good), "all", None, None)) == 1
    assert len(load_rows(str(good), "validation", None, None)) == 1  # the file is one split
    with pytest.raises(UserError, match="no split 'foo': use dev"):
        load_rows(str(good), "foo", None, None)
    tsv = tmp_path / "qa.tsv"
    tsv.write_text("question\tanswer\nq\t1\n")
    with pytest.raises(UserError, match=r"unsupported type \(\.tsv\)"):
        load_rows(str(tsv), "all", None, None)
    with pytest.raises(UserError, match="is a directory"):
        load_rows(str(tmp_path), "all", None, None)
    # a relative name of an existing file without a data suffix is local too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noext").write_text("x\n")
    with pytest.raises(UserError, match=r"unsupported type \(no suffix\)"):
        load_rows("noext", "all", None, None)
    assert splits_overlap("bundled", "all", "dev") and not splits_overlap("x.csv", "nodev", "dev")
    assert not splits_overlap("openai/gsm8k", "train", "test")
    assert splits_overlap("openai/gsm8k", "test", "test")


def test_broken_jsonl_lines_are_skipped_and_counted(tmp_path):
    """One broken line costs one row, not the file; a column whose type changes between
    rows (text, then a number) is read as it is."""
    f = tmp_path / "qa.jsonl"
    f.write_bytes(
        b'{"question": "2+2?", "answer": "4"}\n'
        b'{"question": "3+3?", "answer": 6}\n'
        b'{"question": "broken", "answer": \n'
        b"\n"
        b'{"question": "caf\xe9?", "answer": "1"}\n'
        b"[1, 2]\n"
        b'{"question": "5+5?", "answer": "10"}\n'
    )
    task, exs, skipped, _ = load(f)
    assert [(e.question, e.answer) for e in exs] == [("2+2?", "4"), ("3+3?", "6"), ("5+5?", "10")]
    assert skipped == {
        "line is not valid JSON": 1,
        "line is not UTF-8 text": 1,
        "row is not an object": 1,
    }
    f.write_text("not json\n{also not\n")
    with pytest.raises(UserError, match=r"no usable .* rows .*'line is not valid JSON': 2"):
        load(f)


def test_csv_from_a_spreadsheet_header_only_and_long_rows(tmp_path):
    f = tmp_path / "qa.csv"
    # Excel's UTF-8 CSV starts with a byte-order mark; the first column is still 'question'
    f.write_bytes("\ufeffquestion,answer\n2+2?,4\n".encode())
    _, exs, skipped, _ = load(f)
    assert [(e.question, e.answer) for e in exs] == [("2+2?", "4")] and skipped == {}
    # a row with more cells than the header is skipped; the others keep their columns
    f.write_text('question,answer\na,1,extra,cols\nb\n"c ""q""",3\n')
    _, exs, skipped, _ = load(f)
    assert [(e.question, e.answer) for e in exs] == [('c "q"', "3")]
    assert skipped == {"row has more cells than the header": 1, "empty answer": 1}
    f.write_text("question,answer\n")
    with pytest.raises(UserError, match="the file has a header line only"):
        load(f)


def test_rows_with_a_repeated_id_are_all_evaluated(tmp_path):
    from typer.testing import CliRunner

    from saie_lite.store import Store

    data = tmp_path / "dup.jsonl"
    rows = [{"id": "same" if i % 2 else f"r{i}", "question": f"What is {i} + 1?",
             "answer": f"#### {i + 1}"} for i in range(6)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        app,
        ["eval", "--backend", "scripted", "--task", "custom", "--data", str(data),
         "--split", "all", "--check", "number", "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6  # before: n=4, the repeats overwrote each other
    store = Store(out / "saie.sqlite")
    ids = sorted(i["example_id"] for i in store.eval_items(summary["name"]))
    store.close()
    assert ids == ["r0", "r2", "r4", "same", "same#2", "same#3"]


def test_choice_answers_match_an_option_text_before_an_index(tmp_path):
    rows = [
        {"question": "What is 3-2?", "choices": ["2", "0", "1"], "answer": "1"},
        {"question": "What is 5-5?", "choices": ["5", "4", "0"], "answer": "0"},
        {"question": "Pick the second", "choices": ["x", "y", "z"], "answer": "1"},  # an index
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.build(overrides={"data.task": "custom", "data.path": str(data),
                                  "data.check": "choice", "data.split": "all"})  # fmt: skip
    exs, skipped = get_task(cfg.data).load(cfg.data.path, "all")
    assert not skipped
    # before: the digits were read as an index first, (B) 0 and (A) 5
    assert [e.answer for e in exs] == ["C", "C", "B"]


def test_jsonl_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    from saie_lite.tasks.common import read_jsonl

    data = tmp_path / "bom.jsonl"
    lines = [json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(3)]
    data.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
    assert [r["question"] for r in read_jsonl(data)] == ["q0", "q1", "q2"]


def test_a_run_on_a_relative_data_path_resumes_from_anywhere(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--dry-run", "--task", "custom", "--data",
                                 "examples/own-data/units.jsonl", "--max-steps", "2",
                                 "--live", "quiet", "--run-dir", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = config.build(run / "config.yaml").data.path
    assert saved == str(Path("examples/own-data/units.jsonl").resolve())
    monkeypatch.chdir(tmp_path)  # before: "data file not found: examples/own-data/units.jsonl"
    r = CliRunner().invoke(
        app, ["train", "--resume", str(run), "--max-steps", "3", "--live", "quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "finished: 3 updates" in r.output


@pytest.mark.parametrize("answer", ["1/2", "3 1/2", "1e-3", "3:30", "2^10", "The answer is 1/2."])
def test_number_check_skips_answers_that_are_no_plain_number(answer):
    # before: the last number became the key ('1/2' -> 2), and a right '#### 0.5' was wrong
    assert make_check("number").gold(answer) is None


@pytest.mark.parametrize("answer, gold", [("18", "18"), ("#### 1,000", "1000"),
                                          ("3/4 of the 24 apples is 18", "18")])  # fmt: skip
def test_number_check_still_reads_plain_answers(answer, gold):
    assert make_check("number").gold(answer) == gold


def test_eval_of_an_edited_data_file_is_not_resumed_from_old_rows(tmp_path):
    from typer.testing import CliRunner

    data = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--backend", "scripted", "--task", "custom", "--data", str(data),
            "--split", "all", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    rows[2]["answer"] = "#### 30"  # the user fixes a row
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2  # before: "resuming: 4/4 items already done", old marks
    assert r.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'ev'} holds results for rows that changed since (1 of 4, e.g. "
        "row-2): pass another --out to evaluate the data as it is now"
    )


def test_csv_in_a_windows_code_page_or_with_a_doubled_column_is_one_line(tmp_path):
    from saie_lite.errors import UserError
    from saie_lite.tasks.common import read_csv

    cp = tmp_path / "cp1252.csv"
    cp.write_bytes("question,answer\nCaf\u00e9 price?,#### 3\n".encode("cp1252"))
    with pytest.raises(
        UserError, match=r"is not UTF-8 text \(it holds byte 0xe9\): save it as 'CSV UTF-8'"
    ):
        read_csv(cp)
    dup = tmp_path / "dup.csv"
    dup.write_text("question,answer,answer\nq,#### 1,#### 2\n")
    with pytest.raises(UserError, match=r"names a column twice \(answer\): rename one"):
        read_csv(dup)
