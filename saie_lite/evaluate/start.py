"""Glue for the inference-time commands: ``eval``, ``debate`` and ``logs``.

Evaluations live in an eval directory (``summary.json``); their items go to the run's
SQLite file when a run is evaluated, else to the eval directory's own. Debates are kept
in ``$SAIE_LITE_HOME/logs.sqlite``.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.paths import home, writable_dir
from saie_lite.places import found, logs_db, remember
from saie_lite.safe_text import one_line, visible


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


def start_eval(cfg: Config, run_dir: Path | None, out: Path | None, view=None) -> dict:
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.evaluation import check_can_run, evaluate
    from saie_lite.store import Store
    from saie_lite.tasks import get_task
    from saie_lite.train.runs import StopFlag, prepare_examples, skipped_line
    from saie_lite.ui.eval_view import make_eval_view

    if run_dir is not None and not (Path(run_dir) / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no config.yaml)")
    from saie_lite.train.runs import resolve_backend

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
    from saie_lite.train.context import fit_example

    for agent in {id(a): a for a in agents}.values():
        if not hasattr(agent, "count_tokens"):
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


def start_debate(
    question, file, agents, rounds, stance, task_name, temperature, max_new, live, sets=()
):
    from saie_lite import config as config_mod
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.strategies import interactive_debate, majority
    from saie_lite.protocols import Example
    from saie_lite.store import Store
    from saie_lite.tasks import get_task, is_checked, key_correct
    from saie_lite.ui.debate_view import make_debate_view

    if rounds < 0 or rounds > 10:
        raise UserError("--rounds must be in [0, 10]")
    if max_new < 1 or temperature < 0:
        raise UserError("--max-new-tokens must be >= 1 and --temperature >= 0")
    if question is not None and not question.strip():
        raise UserError("--question is empty: give a question, or leave it out to type them")
    specs = [s for s in agents.split(",") if s.strip()]
    if not specs:
        raise UserError("--agents must name at least one agent")
    stances = parse_stances(stance, len(specs))
    cfg = config_mod.build(overrides={**config_mod.parse_sets(list(sets)), "data.task": task_name})
    # (no --task: data.task is None and dropped, so a --file of data chooses it)
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

    if file is None or Path(file).suffix not in LOCAL_SUFFIXES:
        return None
    cfg.data.path, cfg.data.split = str(file), "all"
    examples, _ = prepare_examples(cfg, lambda line: print(f"note: {line}", flush=True))
    return [(e.question, e.answer) for e in examples]


def get_debate(debate_id: int) -> dict:
    from saie_lite.store import Store

    store = Store(logs_db())
    try:
        found = [d for d in store.debates() if d["id"] == debate_id]
    finally:
        store.close()
    if not found:
        raise UserError(f"no debate {debate_id}: see 'saie-lite logs list'")
    return found[0]


def list_logs() -> str:
    from saie_lite.store import Store

    lines = []
    store = Store(logs_db())
    try:
        debates = store.debates()
        places = {kind: found(kind, store) for kind in ("runs", "evals", "ablations")}
    finally:
        store.close()
    lines.append(f"debates ({len(debates)}):")
    for d in debates:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"]))
        q = one_line(d["question"])  # made visible before it is cut, so no escape is split
        q = q if len(q) < 60 else q[:57] + "..."
        lines.append(f"  {d['id']:>4}  {when}  final={one_line(d['final'])}  {q}")
    for kind in ("runs", "evals"):
        lines.append(f"{kind} ({len(places[kind])}):")
        for p in places[kind]:
            lines.append(f"  {p}")
            if kind == "evals":
                lines.append(f"      {eval_line(p)}")
                continue
            if (p / "saie.sqlite").is_file():
                try:
                    lines += [f"      {line}" for line in run_state(p) + remark_figures(p)]
                except (UserError, sqlite3.Error, OSError, ValueError) as e:
                    # one damaged run must not hide the others
                    why = str(e) if isinstance(e, UserError) else "its saie.sqlite cannot be read"
                    lines.append(f"      ({why})")
            # evaluations kept inside the run: eval --run's default RUN/evals/*, and the
            # RUN/eval and RUN/eval-base that the end-of-run hints suggest
            inside = [q for q in p.glob("*") if (q / "summary.json").is_file()]
            inside += [q for q in (p / "evals").glob("*") if q.is_dir()]
            for e in sorted(inside):
                lines.append(f"      eval {e.relative_to(p).as_posix()}: {eval_line(e)}")
    # ablations keep their runs and evaluations inside (runs/SYSTEM, evals/SYSTEM)
    lines.append(f"ablations ({len(places['ablations'])}):")
    for p in places["ablations"]:
        done = (p / "table.md").is_file()
        lines.append(
            f"  {p}\n      "
            + (
                "finished: table.md, results.json, ablation.png"
                if done
                else "not finished: the same ablate command continues it"
            )  # fmt: skip
        )
    # Paths, run events and summaries are read back from the stores: made visible as a
    # whole, so none of them can drive the terminal either.
    return visible("\n".join(lines))


def run_state(run_dir: Path) -> list[str]:
    """Where a run stands: finished, stopped (and the command that goes on), failed, or
    begun and never ended (killed, or running now). Empty for a run from before runs
    recorded it."""
    import json

    from saie_lite.store import Store
    from saie_lite.train import checkpoint

    store = Store(Path(run_dir) / "saie.sqlite", reader=True)
    try:
        last = store.last_event("begin", "end")
        steps = store.recorded_steps()
    finally:
        store.close()
    if last is None:
        return []
    kind, message = last
    d = json.loads(message)
    resume = f"saie-lite train --resume {run_dir}"
    if kind == "begin":
        from saie_lite.locks import holder

        pid = holder(run_dir)  # its lock says which, without taking it
        if pid is not None:
            return [f"running now (pid {pid or '?'}) at update {steps}"]
        # killed (or running now): a resume goes on from the last checkpoint
        saved = checkpoint.saved_step(run_dir)
        if saved is None:
            return [
                f"not finished (killed, or running now) at update {steps}, before its "
                "first checkpoint: nothing to resume, start it again"
            ]
        return [
            f"not finished (killed, or running now) at update {steps}: {resume} goes on "
            f"from its checkpoint at update {saved}"
        ]
    where = f"update {d['step']} ({d['batches_done']}/{d['total']} batches)"
    if d["status"] == "finished":
        return [f"finished: {d['step']} updates ({d['total']} batches)"]
    if d["status"] == "stopped":
        return [f"stopped at {where}: {resume} goes on"]
    return [f"failed at {where} (see the error it printed): {resume} goes on once fixed"]


def eval_line(eval_dir: Path) -> str:
    """An evaluation's headline from its summary.json: n, every metric's mean with its
    95% interval, and whether it was stopped before the end."""
    import json

    try:
        s = json.loads((eval_dir / "summary.json").read_text())
        parts = [f"n={s['n']}"]
        for name, m in (s.get("metrics") or {}).items():
            if m.get("mean") is None:
                continue
            lo, hi = m.get("ci95") or (None, None)
            pct = name == "accuracy"
            fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
            span = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
            parts.append(f"{name} {fmt(m['mean'])}{span}")
        if s.get("status") == "stopped":
            parts.append("stopped: the same eval command continues it")
        return ", ".join(parts)
    except FileNotFoundError:
        return "(no summary.json: not finished, or not an evaluation)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "(its summary.json cannot be read)"


def remark_figures(run_dir: Path) -> list[str]:
    """A run's remark diagnostics per stance, and the weak-partner line when it holds
    (empty for a run without discussion remarks)."""
    from saie_lite.remarks import rates, rates_line, weak_partner
    from saie_lite.store import Store

    store = Store(Path(run_dir) / "saie.sqlite", reader=True)
    try:
        r = rates(store.remark_diagnostics())
    finally:
        store.close()
    if not r:
        return []
    warn = weak_partner(r)
    return [f"remarks: {rates_line(r)}"] + ([f"warning: {warn}"] if warn else [])


def run_remarks(run_dir: Path) -> str:
    """``saie-lite logs remarks RUN_DIR``."""
    if not (Path(run_dir) / "saie.sqlite").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no saie.sqlite)")
    lines = remark_figures(Path(run_dir))
    if not lines and not (Path(run_dir) / "config.yaml").is_file():  # an evaluation's folder
        raise UserError(f"{run_dir} is not a training run (no config.yaml): give a run directory")
    out = "\n".join(lines) if lines else f"{run_dir}: no partner remarks with diagnostics"
    return visible(out)
