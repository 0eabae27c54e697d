"""Glue for the inference-time commands: ``eval`` and ``debate`` (``logs``: logs.py).

Evaluations live in an eval directory (``summary.json``); their items go to the run's
SQLite file when a run is evaluated, else to the eval directory's own. Debates are kept
in ``$SAIE_LITE_HOME/logs.sqlite``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.paths import home, writable_dir
from saie_lite.places import logs_db, remember
from saie_lite.safe_text import one_line


def _slug(text: str) -> str:
    # no leading dots: '../data/x.jsonl' names a directory 'data-x.jsonl', not '..-data-...'
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[-40:].strip("-.") or "x"


def default_eval_dir(cfg: Config, run_dir: Path | None) -> Path:
    """Deterministic, so running the same evaluation again resumes it; a setting that
    changes the items' results and differs from its default is in the name, so changing
    it starts another evaluation instead of being refused as a mismatch."""
    from saie_lite.config import DataConfig, EvalConfig
    from saie_lite.evaluate.agents import asked_precision

    e, d, e0 = cfg.eval, cfg.data, EvalConfig()
    name = f"{d.task}-{_slug(d.path)}-{d.split}-n{d.limit or 'all'}-{e.strategy}"
    if e.scoring == "loglik":
        name += "-loglik"
    if d.task == "custom":  # another check is another evaluation, not a resumed one
        name += f"-{_slug(d.check)}"
    if d.task == "arithmetic":  # other problems: another evaluation
        name += f"-d{d.difficulty}-g{d.n_generated}"
    d0 = DataConfig()
    tags = [("len", e.max_new_tokens, e0.max_new_tokens), ("", e.metrics, e0.metrics)]
    tags.append(("seed", d.seed, d0.seed))
    if d.task == "custom":  # how your own rows were read decides their marks
        for tag, key in (("fmt-", "format"), ("q-", "question_field"),
                         ("a-", "answer_field"), ("final-", "final_field")):  # fmt: skip
            tags.append((tag, getattr(d, key), getattr(d0, key)))
    if e.strategy in ("self-consistency", "debate"):
        tags += [("k", e.k, e0.k)] if e.strategy == "self-consistency" else []
        tags.append(("t", e.temperature, e0.temperature))
    if e.strategy in ("self-discussion", "debate"):
        tags.append(("r", e.rounds, e0.rounds))
    if e.strategy == "debate":
        tags.append(("", e.agents, e0.agents))
    if e.scoring == "loglik":
        tags.append(("", e.loglik_dtype, e0.loglik_dtype))
    tags += [("", v, "auto") for v in asked_precision(cfg).values()]
    name += "".join(f"-{tag}{_slug(str(v))}" for tag, v, v0 in tags if v != v0)
    if run_dir is not None:
        # per checkpoint: after training further, the same command evaluates the new one
        from saie_lite.train.checkpoint import usable

        ckpt = usable(Path(run_dir))
        return Path(run_dir) / "evals" / (f"{name}-{ckpt.name}" if ckpt else name)
    return home() / "evals" / f"{cfg.learner.backend}-{_slug(cfg.learner.model)}-{name}"


def run_data(run_dir: Path, overrides: dict, note=lambda line: None) -> dict:
    """A run's data settings, as a base layer for evaluating it: the task, the file and
    how its rows were read (fields, check, format...), so that ``eval --run RUN`` reads
    rows the way the run did. The overrides (dotted keys) still win; naming another task
    drops the run's reading of its own (a preset has its own fields and check). The run's
    task counts as given (``config.build``'s ``task_given``): no detection second-guesses
    it. Without ``--data`` and ``--split``, a run trained on ``nodev`` of a local file is
    evaluated on its held-out ``dev`` rows, with a note."""
    from saie_lite.tasks.common import is_local
    from saie_lite.train.next_steps import READING_KEYS
    from saie_lite.train.runs import saved_config

    if not (Path(run_dir) / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no config.yaml)")
    saved = saved_config(run_dir)["data"]
    task = overrides.get("data.task")
    if task is not None and task != saved.get("task"):
        return {}
    keys = ("task", "path", "check", *READING_KEYS)
    data = {k: saved[k] for k in keys if k in saved}
    path = data.get("path", "bundled")
    if (
        "data.path" not in overrides
        and "data.split" not in overrides
        and saved.get("split") == "nodev"
        and (path == "bundled" or is_local(path))
    ):
        data["split"] = "dev"
        note("evaluating on the run's held-out dev rows (it trained on data.split=nodev)")
    return {"data": data}


def eval_config(overrides: dict, run_dir: Path | None = None, note=lambda line: None) -> Config:
    """An evaluation's config from dotted overrides (flags, ``--set``, the Python API);
    given a run, its data settings are the base (``run_data``)."""
    from saie_lite import config as config_mod

    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = run_data(Path(run_dir), overrides, note) if run_dir is not None else None
    return config_mod.build(None, overrides, base=base)


def start_eval(cfg: Config, run_dir: Path | None, out: Path | None, view=None) -> dict:
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.evaluation import check_can_run, evaluate
    from saie_lite.store import Store
    from saie_lite.tasks import get_task
    from saie_lite.train.runs import StopFlag, prepare_examples, skipped_line
    from saie_lite.ui.eval_view import make_eval_view

    if run_dir is not None and not (Path(run_dir) / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no config.yaml)")
    from saie_lite.track.registry import require
    from saie_lite.train.runs import resolve_backend

    require(cfg.train.report_to)  # a tracker's missing library: said before anything loads
    view = view or make_eval_view()
    if run_dir is None:  # else the run's own backend is used (load_learner)
        resolve_backend(cfg, view.note)
    # settles the task of a --data file given none, and an 'auto' check, into cfg.data
    from saie_lite.config import unusual

    for line in unusual(cfg):  # allowed, but said before anything loads
        view.note(line)
    examples, skipped = prepare_examples(cfg, view.note)
    task = get_task(cfg.data)
    if skipped:
        view.note(skipped_line(skipped))
    if cfg.data.task == "custom":
        from saie_lite.tasks.custom import describe

        view.note(describe(cfg.data))
        view.checked = task.checked
    from saie_lite.train.memory import check_memory

    check_memory(cfg, examples, view.note, "eval", run_dir=run_dir)  # before a model loads
    out_dir = Path(out) if out else default_eval_dir(cfg, run_dir)
    specs = cfg.eval.agents.split(",") if cfg.eval.strategy == "debate" else ["learner"]
    agents = build_agents(cfg, specs, run_dir)
    check_can_run(cfg, task, agents)  # before the evaluation's folder is made
    db = (Path(run_dir) / "saie.sqlite") if run_dir else out_dir / "saie.sqlite"
    # The evaluation's key in that database: in a run's database, two --out folders with
    # the same last name must not share items, so any but the default RUN/evals/NAME is
    # known by its whole path.
    key = out_dir.name
    if run_dir is not None and out_dir.resolve().parent != (Path(run_dir) / "evals").resolve():
        key = str(out_dir.resolve())
    if run_dir is not None:  # the evaluation's items go into the run's database
        writable_dir(
            Path(run_dir),
            "run directory",
            "an evaluation of a run is kept in the run's saie.sqlite: copy the run to a "
            "writable directory and evaluate it there",
        )
    writable_dir(out_dir, "evaluation directory", "choose another --out, or set SAIE_LITE_HOME")
    from saie_lite.locks import hold

    # One process per evaluation: two at once would each evaluate every item.
    with hold(out_dir, "evaluation", view.note):
        remember("evals", out_dir)
        store = Store(db)
        try:
            with StopFlag(lambda again: view.note(f"stopping after this batch ({again})")) as flag:
                summary = evaluate(
                    cfg,
                    task,
                    examples,
                    agents,
                    store,
                    key,
                    out_dir,
                    view.progress,
                    flag,
                    view.note,
                )
        finally:
            store.close()
    view.summary(summary, out_dir)
    from saie_lite.track.feeds import track_eval

    track_eval(cfg, out_dir, summary, view.note, run_dir)  # mirrors summary.json, written above
    summary["signal"] = flag.signum  # the command's exit code says which one stopped it
    return summary


def _questions(question: str | None, file: Path | None, note=lambda message: None):
    if question:
        yield question
        return
    if file:
        if not Path(file).is_file():
            raise UserError(f"question file not found: {file}")
        try:
            text = Path(file).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"question file {file} is not UTF-8 text (bad byte at offset {e.start}): "
                "give one question per line"
            ) from None
        questions = [q.strip() for q in text.splitlines() if q.strip()]
        if not questions:
            raise UserError(f"question file {file} has no questions: give one per line")
        yield from questions
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            from saie_lite.ui.line_input import ask_line

            q = ask_line("Question (empty line quits): ", note)
        else:
            q = sys.stdin.readline()
        if not q:  # an empty line, or the end of input (Ctrl-D)
            return
        q = q.strip()
        if not q:
            return
        yield q


def fit_debate_question(cfg: Config, task, agents: list, ex, max_new: int, note):
    """The question clipped to the context of every agent that can count its tokens,
    with the note ``train`` and ``eval`` give: a question far past the context would
    otherwise be fed whole (minutes of attention for an answer that cannot fit)."""
    from saie_lite.protocols import CountsTokens, supports
    from saie_lite.train.context import fit_example

    for agent in {id(a): a for a in agents}.values():
        if not supports(agent, CountsTokens):
            continue
        fitted, line = fit_example(agent, task, ex, max_new, cfg.learner.max_seq_len, "truncate")
        if line:
            note(line if fitted is not None else f"{line}; debated unclipped")
        ex = fitted or ex
    return ex


def parse_stances(stance: str | None, n: int) -> list[str | None]:
    stances: list[str | None] = [None] * n
    if not stance:
        return stances
    idx, _, kind = stance.rpartition(":")
    if kind != "adversarial":
        raise UserError(f"--stance takes 'adversarial' or 'N:adversarial', got {stance!r}")
    if idx and not idx.isdigit():
        raise UserError(
            f"--stance takes 'adversarial' or 'N:adversarial' (N in 1..{n}), got {stance!r}"
        )
    i = int(idx) - 1 if idx else n - 1
    if not 0 <= i < n:
        raise UserError(f"--stance names agent {i + 1}; agents are numbered 1..{n}")
    stances[i] = "adversarial"
    return stances


# A debate's own defaults for the eval.* keys it reads (eval's would debate the learner
# with itself for two rounds): two embedded partners, one round, shorter turns.
DEBATE_DEFAULTS = {
    "eval.agents": "llama_cpp:embedded,llama_cpp:embedded",
    "eval.rounds": 1,
    "eval.max_new_tokens": 192,
}


def debate_config(overrides: dict) -> Config:
    """A debate's config: its agents, rounds, temperature and turn length are the eval.*
    keys, its questions' data the data.* keys, checked like every other command's."""
    from saie_lite import config as config_mod

    given = {k: v for k, v in overrides.items() if v is not None}
    # (no --task: data.task is not given, so a data file's rows choose it)
    return config_mod.build(None, {**DEBATE_DEFAULTS, **given})


def start_debate(cfg: Config, question=None, file=None, stance=None, live="auto"):
    """Debate ``question``, or each question of ``file`` (one per line, or a data file),
    or of ``cfg.data.path`` when it names data, or questions typed one at a time."""
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.strategies import interactive_debate, majority
    from saie_lite.protocols import Example
    from saie_lite.store import Store
    from saie_lite.tasks import get_task, is_checked, key_correct
    from saie_lite.ui.debate_view import make_debate_view

    e = cfg.eval
    rounds, temperature, max_new = e.rounds, e.temperature, e.max_new_tokens
    if question is not None and not question.strip():
        raise UserError("--question is empty: give a question, or leave it out to type them")
    specs = [s for s in e.agents.split(",") if s.strip()]
    if not specs:
        raise UserError("--agents must name at least one agent")
    stances = parse_stances(stance, len(specs))
    items = data_questions(cfg, file)  # a data file: its questions, and gold answers to mark
    task = get_task(cfg.data)
    from saie_lite.train.runs import resolve_backend

    resolve_backend(cfg, lambda message: None)
    models = build_agents(cfg, specs)
    # Display names: the spec the user typed, and who plays the critic.
    names = [s.strip() + (" (critic)" if st else "") for s, st in zip(specs, stances)]
    view = make_debate_view(live)
    store = Store(logs_db())
    asked = items or ((q, None) for q in _questions(question, file, view.note))
    try:
        for n, (q, gold) in enumerate(asked):
            ex = Example(id=f"question {n + 1}", question=q, reference="", answer=gold or "")
            q = fit_debate_question(cfg, task, models, ex, max_new, view.note).question
            res = interactive_debate(
                q, models, names, task, rounds, temperature, max_new, stances, view
            )
            last = [t for t in res.turns if t.round == rounds]
            final, _ = majority([t.key for t in last])
            did = store.add_debate(q, names, rounds, [t.__dict__ for t in res.turns], final)
            view.verdict([t.key for t in last], final, did)
            if gold is not None and is_checked(task):
                ok = key_correct(task, final, gold)
                mark = "RIGHT" if ok else "WRONG"
                print(f"reference answer: {one_line(gold)} ({mark})", flush=True)
    finally:
        view.close()  # Ctrl-C mid-answer too: a live view left running hides the cursor
        store.close()


def data_questions(cfg: Config, file: Path | None) -> list[tuple[str, str]] | None:
    """``debate --file`` on a data file (.jsonl/.json/.csv/.parquet): each row's question
    with its gold answer, read like ``train`` and ``eval`` read it. A plain text file
    (one question per line) gives None."""
    from saie_lite.tasks.common import LOCAL_SUFFIXES
    from saie_lite.train.runs import prepare_examples

    if file is not None:
        if Path(file).suffix not in LOCAL_SUFFIXES:
            return None
        cfg.data.path = str(file)
    elif cfg.data.path == "bundled":  # the default: no data named, questions are asked
        return None
    # a local file's default split ('train') is every row, as 'all' is
    examples, _ = prepare_examples(cfg, lambda line: print(f"note: {line}", flush=True))
    return [(e.question, e.answer) for e in examples]
