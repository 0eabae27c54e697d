"""Evaluation runs and paired comparisons with a scripted learner."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.evaluate.evaluation import evaluate
from saie_lite.evaluate.pairing import compare, content_id
from saie_lite.store import Store
from saie_lite.tasks import gsm8k

runner = CliRunner()


def dry_run_into(run, limit: int) -> None:
    """A finished scripted run (train --dry-run) in ``run``."""
    r = runner.invoke(
        app, ["train", "--dry-run", "--limit", str(limit), "--live", "quiet", "--run-dir", str(run)]
    )
    assert r.exit_code == 0, r.output


def cfg_with(**over):
    return config.build(overrides={"learner.backend": "scripted", "eval.batch_size": 2, **over})


def test_summary_figures_and_items_in_sqlite(tmp_path):
    exs = gsm8k.load("bundled")[0][:4]
    agent = ScriptedLearner()
    agent.enqueue(
        f"#### {exs[0].answer}", "The answer is 3.", "nothing here", f"so {exs[3].answer}"
    )
    store = Store(tmp_path / "saie.sqlite")
    s = evaluate(cfg_with(), gsm8k, exs, [agent], store, "e", tmp_path)
    assert s["n"] == 4
    assert s["strict"]["correct"] == 1 and s["flexible"]["correct"] == 2
    assert s["parse_failure_rate"] == {"strict": 0.5, "flexible": 0.25}
    lo, hi = s["strict"]["ci95"]
    assert 0 < lo < 0.25 < hi < 1
    rows = store.eval_items("e")
    assert [r["example_id"] for r in rows] == [e.id for e in exs]
    assert json.loads(rows[0]["turns"])[0]["text"] == f"#### {exs[0].answer}"
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 4
    store.close()


def test_eval_resumes_and_refuses_other_settings(tmp_path, capsys):
    exs = gsm8k.load("bundled")[0][:6]
    store = Store(tmp_path / "saie.sqlite")
    checks = {"n": 0}

    def stop():
        checks["n"] += 1
        return checks["n"] > 1  # stop after the first batch

    s1 = evaluate(cfg_with(), gsm8k, exs, [ScriptedLearner()], store, "e", tmp_path, stop=stop)
    assert s1["status"] == "stopped" and s1["n"] == 2
    from saie_lite.ui.eval_view import EvalView

    EvalView(rich=False).summary(s1, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "  stopped: the same eval command continues it, finished items kept",
        f"  summary: {tmp_path}/summary.json",
    ]
    agent = ScriptedLearner()
    s2 = evaluate(cfg_with(), gsm8k, exs, [agent], store, "e", tmp_path)
    assert s2["status"] == "finished" and s2["n"] == 6
    asked = [h for h in agent.history if h["call"] == "generate"]
    assert sum(len(h["chats"]) for h in asked) == 4  # only the missing items
    # each batch reseeds from its first item's position: 2 batches, positions 2 and 4
    assert [h["seed"] for h in agent.history if h["call"] == "reseed"] == [2, 4]
    with pytest.raises(UserError, match=r"holds an evaluation with other settings \(k, strategy"):
        evaluate(
            cfg_with(**{"eval.strategy": "self-consistency"}),
            gsm8k,
            exs,
            [ScriptedLearner()],
            store,
            "e",
            tmp_path,
        )
    store.close()


def test_compare_refuses_different_items():
    a = {"items": [{"id": "1", "strict_correct": True, "flexible_correct": True}]}
    b = {"items": [{"id": "2", "strict_correct": True, "flexible_correct": True}]}
    with pytest.raises(
        UserError, match=r"different items \(n=1 vs n=1; 0 shared, 1 only in A, 1 only in B\)"
    ):
        compare(a, b)
    with pytest.raises(UserError, match=r"^the evaluations share no items \(n=1 vs n=1\)"):
        compare(a, b, shared_only=True)


def test_cli_eval_twice_then_compare(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    base = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "6"]
    r = runner.invoke(app, [*base, "--out", str(out_a)])
    assert r.exit_code == 0, r.output
    assert "strict   accuracy 0.0%  95% CI [0.0%, 39.0%]" in r.output
    r = runner.invoke(
        app, [*base, "--strategy", "self-consistency", "--k", "3", "--out", str(out_b)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", str(out_a), str(out_b)])
    assert r.exit_code == 0 and "paired over n=6 items" in r.output
    assert "no significant difference (p=1)" in r.output
    r = runner.invoke(
        app,
        [
            "eval",
            "--backend",
            "scripted",
            "--data",
            "bundled",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    r = runner.invoke(app, ["compare", str(out_a), str(tmp_path / "c")])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: the evaluations cover different items (n=6 vs n=4; 4 shared, 2 only in A, "
        "0 only in B): evaluate both with the same --data, --split and --limit, or pass "
        "--shared-only to pair the shared items"
    )
    r = runner.invoke(app, ["compare", "--shared-only", str(out_a), str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "paired over the n=4 shared items (left out: 2 only in A, 0 only in B)" in r.output


def test_cli_loglik_needs_multiple_choice():
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--scoring", "loglik"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: config: eval.scoring 'loglik' scores choice letters: use it with commonsense_qa or mmlu"
    )


def _gsm8k_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _eval(data, out):
    return runner.invoke(
        app, ["eval", "--backend", "scripted", "--data", data, "--limit", "4", "--out", str(out)]
    )


def test_items_are_known_by_content_not_by_row(tmp_path, gsm8k_rows):
    """Two evaluations of equal length over different rows share no item: refused."""
    a = _gsm8k_file(tmp_path / "a.jsonl", gsm8k_rows[0:4])
    b = _gsm8k_file(tmp_path / "b.jsonl", gsm8k_rows[4:8])
    assert _eval(a, tmp_path / "ea").exit_code == 0
    assert _eval(b, tmp_path / "eb").exit_code == 0
    sa = json.loads((tmp_path / "ea" / "summary.json").read_text())
    assert sa["item_ids"] == "sha256(question, answer)[:16]"
    exs = gsm8k.load(a)[0]
    assert [i["id"] for i in sa["items"]] == [content_id(e.question, e.answer) for e in exs]
    assert [i["dataset_id"] for i in sa["items"]] == [r["id"] for r in gsm8k_rows[0:4]]
    store = Store(tmp_path / "ea" / "saie.sqlite")
    assert [r["item_id"] for r in store.eval_items("ea")] == [i["id"] for i in sa["items"]]
    store.close()
    r = runner.invoke(app, ["compare", str(tmp_path / "ea"), str(tmp_path / "eb")])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: the evaluations cover different items (n=4 vs n=4; 0 shared, 4 only in A, "
        "4 only in B): evaluate both with the same --data, --split and --limit, or pass "
        "--shared-only to pair the shared items"
    )
    r = runner.invoke(app, ["compare", "--shared-only", str(tmp_path / "ea"), str(tmp_path / "eb")])
    assert r.exit_code == 2
    assert r.output.strip() == "error: the evaluations share no items (n=4 vs n=4): nothing to pair"
    # The same rows in another order (another file) pair fine: ids follow the content.
    c = _gsm8k_file(tmp_path / "c.jsonl", gsm8k_rows[0:4][::-1])
    assert _eval(c, tmp_path / "ec").exit_code == 0
    r = runner.invoke(app, ["compare", str(tmp_path / "ea"), str(tmp_path / "ec")])
    assert r.exit_code == 0 and "paired over n=4 items" in r.output


def test_repeated_question_keeps_its_own_id(tmp_path, gsm8k_rows):
    again = {**gsm8k_rows[0], "id": "copy-of-first"}  # the same question under another id
    a = _gsm8k_file(tmp_path / "a.jsonl", [gsm8k_rows[0], gsm8k_rows[1], again])
    assert _eval(a, tmp_path / "ea").exit_code == 0
    ids = [i["id"] for i in json.loads((tmp_path / "ea" / "summary.json").read_text())["items"]]
    assert ids[2] == ids[0] + "#2" and len(set(ids)) == 3


def test_compare_refuses_old_and_broken_summaries(tmp_path):
    out = tmp_path / "a"
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--limit", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    good = json.loads((out / "summary.json").read_text())
    cases = {
        "old": (
            {k: v for k, v in good.items() if k != "item_ids"},
            "was written before items had content ids, so it cannot be paired safely: run "
            "the same 'saie-lite eval' again to rewrite it (finished items are not redone)",
        ),
        "fields": (
            {"n": 3, "items": [{"id": "x"}]},
            "is not a saie-lite evaluation summary (no items with id, strict_correct and "
            "flexible_correct): give the summary.json that 'saie-lite eval' wrote",
        ),
        "list": (
            [1, 2],
            "is not a saie-lite evaluation summary (no items with id, strict_correct and "
            "flexible_correct): give the summary.json that 'saie-lite eval' wrote",
        ),
    }

    def damaged(field, value, index=1):
        items = [dict(i, metrics=dict(i.get("metrics", {}))) for i in good["items"]]
        if field == "id":
            items[index]["id"] = value
        elif field.startswith("metrics."):
            items[index]["metrics"][field[8:]] = value
        else:
            items[index][field] = value
        return dict(good, items=items)

    dup = good["items"][0]["id"]
    cases |= {
        "nll_null": (damaged("metrics.nll", None), "item 2 has metric nll None, not a number"),
        "nll_text": (damaged("metrics.nll", "abc"), "item 2 has metric nll 'abc', not a number"),
        "correct_text": (
            damaged("strict_correct", "yes"),
            "item 2 has strict_correct 'yes', not true/false",
        ),
        "id_null": (damaged("id", None), "item 2 has id None, not a text id"),
    }
    cases = {
        k: (c, f"{line}: re-run the evaluation to rewrite it" if "item 2" in line else line)
        for k, (c, line) in cases.items()
    }
    cases["id_twice"] = (
        damaged("id", dup),
        "lists an item id twice: re-run the evaluation to rewrite it",
    )
    for name, (content, line) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(content))
        r = runner.invoke(app, ["compare", str(out), str(d)])
        assert r.exit_code == 2, name
        sep = ": " if line.startswith("item") else " "
        assert r.output.strip() == f"error: {d / 'summary.json'}{sep}{line}", name
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_bytes(b"\xff\xfe{not json")
    r = runner.invoke(app, ["compare", str(out), str(tmp_path / "bad")])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {tmp_path / 'bad' / 'summary.json'} is not valid JSON: re-run the "
        "evaluation to rewrite it"
    )
    # Running the same eval again rewrites an old summary with content ids, redoing nothing.
    (out / "summary.json").write_text(json.dumps(cases["old"][0]))
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--limit", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["items"] == good["items"]


class FixedScores:
    """An agent that scores choices with given numbers (log-likelihood path only)."""

    name = "fixed"
    tokens_generated = 0

    def __init__(self, scores):
        self.scores = list(scores)

    def choice_logprobs(self, chats, prefix, options):
        return [self.scores.pop(0) for _ in chats]


def test_loglik_ties_go_to_the_first_choice_and_scores_are_kept(tmp_path):
    from saie_lite.evaluate.evaluation import margin, pick_choice
    from saie_lite.tasks import commonsense_qa

    assert pick_choice(["A", "B", "C"], [-2.0, -0.5, -0.5]) == "B"
    assert pick_choice(["A", "B", "C"], [-1.0, -1.0, -1.0]) == "A"
    assert margin({"A": -2.0, "B": -0.5, "C": -0.75}) == 0.25
    rows = [
        {
            "id": f"q{i}",
            "question": f"Which one is number {i}?",
            "choices": {"label": ["A", "B", "C"], "text": ["one", "two", "three"]},
            "answerKey": "B",
        }
        for i in range(3)
    ]
    data = tmp_path / "csqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = commonsense_qa.load(str(data))[0]
    agent = FixedScores([[-3.0, -1.25, -1.25], [-0.5, -0.5, -2.0], [-4.0, -1.0, -1.5]])
    cfg = cfg_with(**{"data.task": "commonsense_qa", "eval.scoring": "loglik"})
    store = Store(tmp_path / "saie.sqlite")
    s = evaluate(cfg, commonsense_qa, exs, [agent], store, "e", tmp_path)
    assert [r["strict"] for r in store.eval_items("e")] == ["B", "A", "B"]
    assert store.eval_items("e")[0]["choice_scores"] == {"A": -3.0, "B": -1.25, "C": -1.25}
    items = json.loads((tmp_path / "summary.json").read_text())["items"]
    assert [i["dataset_id"] for i in items] == ["q0", "q1", "q2"]
    assert [i["margin"] for i in items] == [0.0, 0.0, 0.5]
    assert items[2]["choice_scores"] == {"A": -4.0, "B": -1.0, "C": -1.5}
    assert s["strict"]["correct"] == 2
    assert s["loglik"] == {"ties": 2, "within_0.1": 2, "median_margin": 0.0}
    from saie_lite.ui.eval_view import summary_lines

    assert summary_lines(s)[1] == (
        "  log-likelihood: 2 exact ties (first choice taken), 2 calls within 0.1 nats, "
        "median margin 0.000 nats"
    )
    store.close()


def test_logs_list_shows_every_evaluation_with_its_figures(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    run = home / "runs" / "r1"
    dry_run_into(run, 4)
    base = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "6"]
    assert runner.invoke(app, [*base, "--run", str(run)]).exit_code == 0
    assert runner.invoke(app, [*base, "--out", str(run / "eval-base")]).exit_code == 0
    assert runner.invoke(app, base).exit_code == 0
    (home / "evals" / "broken").mkdir()
    (home / "evals" / "broken" / "summary.json").write_text("{not json")
    r = runner.invoke(app, ["logs", "list"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # the run's own evaluation, under the run, with n and the interval of each metric
    base_eval, inside = [x for x in lines if x.strip().startswith("eval ")]  # sorted
    assert inside.startswith("      eval evals/gsm8k-bundled-")
    assert base_eval.startswith("      eval eval-base: n=6, accuracy 0.0% [0.0%, 39.0%]")
    assert "n=6, accuracy 0.0% [0.0%, 39.0%]" in inside
    assert ", nll 0.833 [0.217, 1.449], rouge 0.000 [0.000, 0.000]" in inside
    # the standalone evaluation, and a damaged one that hides nothing else
    assert "evals (2):" in lines
    i = lines.index(f"  {home / 'evals' / 'broken'}")
    assert lines[i + 1] == "      (its summary.json cannot be read)"
    heads = [x for x in lines if x.startswith("      n=6, accuracy 0.0% [0.0%, 39.0%]")]
    assert len(heads) == 1


def test_changed_settings_get_their_own_default_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    base = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "3"]
    summaries = []
    for extra in (["--strategy", "self-consistency", "--k", "3"],
                  ["--strategy", "self-consistency", "--k", "2"],
                  ["--strategy", "self-consistency", "--k", "3"],
                  ["--max-new-tokens", "64", "--metrics", "accuracy,nll"]):  # fmt: skip
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 0, r.output  # before: "holds an evaluation with other settings"
        summaries.append(r.output.strip().splitlines()[-1])
    names = [Path(s.split("summary: ")[1]).parent.name for s in summaries]
    assert names == [
        "scripted-embedded-gsm8k-bundled-train-n3-self-consistency-k3",
        "scripted-embedded-gsm8k-bundled-train-n3-self-consistency-k2",
        "scripted-embedded-gsm8k-bundled-train-n3-self-consistency-k3",  # the same one again
        "scripted-embedded-gsm8k-bundled-train-n3-single-len64-accuracy-nll",
    ]


def test_own_data_read_another_way_is_another_default_directory():
    from saie_lite.evaluate.start import default_eval_dir

    def name(**over):
        c = config.build(overrides={"data.task": "custom", "data.path": "my.jsonl", **over})
        return default_eval_dir(c, None).name

    plain = name()
    assert name(**{"data.question_field": "q"}) == plain + "-q-q"
    assert name(**{"data.format": "chat"}) != plain
    assert name(**{"data.question_field": "q"}) != name(**{"data.answer_field": "q"})


def test_eval_of_a_run_trained_further_is_a_new_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    dry_run_into(run, 8)
    ev = ["eval", "--run", str(run), "--data", "bundled", "--split", "dev", "--limit", "4"]
    first = runner.invoke(app, [*ev, "--out", str(tmp_path / "ev")])
    default1 = runner.invoke(app, ev)
    r = runner.invoke(
        app, ["train", "--resume", str(run), "--dry-run", "--rounds", "2", "--live", "quiet"]
    )
    assert r.exit_code == 0, r.output
    default2 = runner.invoke(app, ev)
    assert first.exit_code == default1.exit_code == default2.exit_code == 0
    path = lambda r: Path(r.output.strip().splitlines()[-1].split("summary: ")[1])  # noqa: E731
    # the default directory names the checkpoint: the newer adapter is evaluated afresh
    assert path(default1).parent.name.endswith("-step-000003")
    assert path(default2).parent.name.endswith("-step-000005")
    assert "already done" not in default2.output
    s1, s2 = (json.loads(path(r).read_text()) for r in (default1, default2))
    assert s1["settings"]["agents"] == ["scripted+run@step-000003"]
    assert s1["metrics"]["nll"]["mean"] != s2["metrics"]["nll"]["mean"]
    # an explicit --out holding the older adapter's items is refused, not resumed
    again = runner.invoke(app, [*ev, "--out", str(tmp_path / "ev")])
    assert (
        again.exit_code == 2 and "holds an evaluation with other settings (agents)" in again.output
    )


def test_two_out_folders_of_one_run_with_the_same_name_share_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    dry_run_into(run, 4)
    ev = ["eval", "--run", str(run), "--data", "bundled", "--limit", "3"]
    a = runner.invoke(app, [*ev, "--out", str(tmp_path / "a" / "ev")])
    b = runner.invoke(app, [*ev, "--out", str(tmp_path / "b" / "ev")])
    c = runner.invoke(
        app, [*ev, "--strategy", "self-discussion", "--out", str(tmp_path / "c" / "ev")]
    )
    assert a.exit_code == b.exit_code == c.exit_code == 0, c.output
    # before: b resumed a's items ("3/3 items already done") and c was refused as a's
    # evaluation "with other settings", though both folders were new
    assert "already done" not in b.output + c.output
    assert (tmp_path / "b" / "ev" / "summary.json").is_file()


def test_compare_without_an_answer_check_pairs_no_accuracy(tmp_path):
    base = ["eval", "--backend", "scripted", "--task", "custom", "--check", "none",
            "--data", "examples/own-data/units-freeform.jsonl", "--split", "dev", "--limit", "4"]  # fmt: skip
    for out in ("a", "b"):
        r = runner.invoke(app, [*base, "--out", str(tmp_path / out)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "accuracy not compared: the data has no answer check (data.check: none)" in r.output
    assert "McNemar" not in r.output and "strict" not in r.output
    assert "rouge" in r.output  # the metrics that need no check are still paired


def test_run_commands_given_an_evaluation_folder_say_so(tmp_path):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "2",
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    for args in (
        ["logs", "remarks", str(out)],
        ["logs", "export", str(out), "--format", "dataset"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: {out} is not a training run (no config.yaml): give a run directory"
        )


def test_what_the_agent_cannot_do_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--task", "commonsense_qa",
                            "--data", "tests/data/csqa_sample.jsonl", "--split", "all",
                            "--scoring", "loglik", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: agent scripted cannot score log-likelihoods: use --scoring generate"
    )
    assert not out.exists()  # before: an empty evaluation that logs list then showed


def test_eval_run_loads_the_precision_the_command_asks_for(tmp_path, monkeypatch):
    from saie_lite import registry
    from saie_lite.evaluate.agents import load_learner

    run = tmp_path / "run"
    dry_run_into(run, 4)
    seen = []
    real = registry.factory

    def spy(kind, name):
        make = real(kind, name)
        return lambda c, *a: (seen.append(c.learner.dtype), make(c, *a))[1]

    monkeypatch.setattr(registry, "factory", spy)
    load_learner(config.build(overrides={"learner.dtype": "bfloat16"}), run)
    load_learner(config.build(), run)
    # asked for: the one loaded (and recorded by the evaluation); else the run's own
    assert seen == ["bfloat16", "auto"]
