"""Did it help: ``eval``, ``compare``, ``ablate``; and ``debate``, the discussion at
inference time."""

from __future__ import annotations

from pathlib import Path

import typer

# Allowed values are read from the schema, so a new one shows in --help at once.
from saie_lite.config import choices_help


def eval_(
    task: str | None = typer.Option(
        None,
        help="gsm8k | commonsense_qa | mmlu | custom (own data); default: a --data file's "
        "rows choose, else gsm8k",
    ),
    check: str | None = typer.Option(
        None, help="--task custom: number | choice | exact | contains | regex:PATTERN | none"
    ),
    data: str | None = typer.Option(
        None, help="hub name, .jsonl/.json/.csv/.parquet path, or 'bundled'"
    ),
    split: str | None = typer.Option(None, help="hub split; local files: dev | nodev | all"),
    limit: int | None = typer.Option(None, help="evaluate N items (0 = all)"),
    model: str | None = typer.Option(None, help="learner: hub id, local dir, or 'embedded'"),
    backend: str | None = typer.Option(None, help="learner backend"),
    run: Path | None = typer.Option(None, help="evaluate this run's learner (latest adapter)"),
    strategy: str | None = typer.Option(None, help=choices_help("eval.strategy")),
    k: int | None = typer.Option(None, help="self-consistency samples"),
    rounds: int | None = typer.Option(None, help="self-discussion / debate rounds"),
    agents: str | None = typer.Option(None, help="debate agents, e.g. learner,llama_cpp:embedded"),
    temperature: float | None = typer.Option(None, help="sampling temperature"),
    scoring: str | None = typer.Option(
        None, help=f"{choices_help('eval.scoring')} (loglik: multiple choice)"
    ),
    max_new_tokens: int | None = typer.Option(None, help="longest answer per turn"),
    batch_size: int | None = typer.Option(None, help="items generated together"),
    metrics: str | None = typer.Option(
        None, help="comma list of accuracy | nll | rouge (default: all that apply)"
    ),
    out: Path | None = typer.Option(None, help="eval directory (same one = resume)"),
    set_: list[str] = typer.Option([], "--set", help="any config key: section.key=value"),
) -> None:
    """Measure accuracy, nll and rouge (with 95% intervals) of a learner under a strategy."""
    from saie_lite import config as config_mod
    from saie_lite.evaluate.start import start_eval

    try:
        flags = {
            "data.task": task,
            "data.check": check,
            "data.path": data,
            "data.split": split,
            "data.limit": limit,
            "learner.model": model,
            "learner.backend": backend,
            "eval.strategy": strategy,
            "eval.k": k,
            "eval.rounds": rounds,
            "eval.agents": agents,
            "eval.temperature": temperature,
            "eval.scoring": scoring,
            "eval.max_new_tokens": max_new_tokens,
            "eval.batch_size": batch_size,
            "eval.metrics": metrics,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        cfg = config_mod.build(None, {**config_mod.parse_sets(set_), **given})
        summary = start_eval(cfg, run, out)
    except KeyboardInterrupt as e:
        typer.secho("aborted; finished items are saved", fg="yellow", err=True)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    if summary["status"] == "stopped":
        from saie_lite.train.runs import exit_code

        raise typer.Exit(exit_code(summary.get("signal")))  # 128 + the signal that stopped it


def compare(
    a: Path = typer.Argument(..., help="eval directory (or its summary.json) of system A"),
    b: Path = typer.Argument(..., help="eval directory (or its summary.json) of system B"),
    shared_only: bool = typer.Option(
        False,
        "--shared-only",
        help="pair only the items both evaluations hold (else different item sets are refused)",
    ),
) -> None:
    """Paired comparison on the same items: McNemar for accuracy, t-test and Wilcoxon for nll/rouge."""
    from saie_lite.evaluate.pairing import compare as do_compare
    from saie_lite.evaluate.pairing import load_summary
    from saie_lite.ui.eval_view import print_compare

    sa, sb = load_summary(a), load_summary(b)
    print_compare(str(a), str(b), sa, sb, do_compare(sa, sb, shared_only))


def ablate(
    recipe: Path | None = typer.Option(
        None, "--recipe", "-r", help="YAML recipe, e.g. recipes/ablate-quick.yaml"
    ),
    out: Path | None = typer.Option(
        None,
        help="experiment directory (same one = resume); default $SAIE_LITE_HOME/ablations/<recipe>",
    ),
    live: str = typer.Option("auto", help="auto | rich | plain"),
    set_: list[str] = typer.Option([], "--set", help="any config key: section.key=value"),
) -> None:
    """The paper's rows in one command: train sft, saie-support, saie-adversarial, saie; evaluate
    them and the base; write table.md, results.json, ablation.png."""
    from saie_lite import config as config_mod
    from saie_lite.evaluate.ablation import default_dir, run_ablation
    from saie_lite.train.runs import StopFlag
    from saie_lite.ui.ablate_view import make_ablate_view

    try:
        cfg = config_mod.build(recipe, config_mod.parse_sets(set_))
        target = Path(out) if out else default_dir(cfg, recipe)
        view = make_ablate_view(live)
        with StopFlag(lambda again: view.note(f"stopping after this step ({again})")) as flag:
            res = run_ablation(cfg, target, view, flag)
    except KeyboardInterrupt as e:
        typer.secho(
            "aborted; finished parts are kept, run the same command to continue",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    if res["status"] == "stopped":
        from saie_lite.train.runs import exit_code

        raise typer.Exit(exit_code(flag.signum))  # 128 + the signal that stopped it
    typer.echo((target / "table.md").read_text())


def debate_cmd(
    question: str | None = typer.Option(None, "--question", "-q", help="ask this and exit"),
    file: Path | None = typer.Option(
        None, help="one question per line, or a .jsonl/.json/.csv/.parquet data file"
    ),
    agents: str = typer.Option(
        "llama_cpp:embedded,llama_cpp:embedded",
        help="comma list: llama_cpp:embedded | llama_cpp:PATH.gguf | torch:MODEL | run:RUN_DIR",
    ),
    rounds: int = typer.Option(1, help="rounds after the first answers"),
    stance: str | None = typer.Option(
        None, help="'adversarial' makes the last agent the critic; or N:adversarial"
    ),
    task: str | None = typer.Option(
        None,
        help="answer format and extraction: gsm8k | commonsense_qa | mmlu | custom; "
        "default: a --file of data's rows choose, else gsm8k",
    ),
    check: str | None = typer.Option(
        None, help="--task custom: number | choice | exact | contains | regex:PATTERN | none"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="data keys for --file data, e.g. data.question_field=q"
    ),
    temperature: float = typer.Option(0.7, help="sampling temperature of every agent"),
    max_new_tokens: int = typer.Option(192, help="longest turn"),
    live: str = typer.Option("auto", help="auto | rich | plain"),
) -> None:
    """Let models discuss a question: n agents, r rounds, streamed turns, majority vote."""
    from saie_lite.evaluate.start import start_debate

    try:
        sets = [*set_, *([f"data.check={check}"] if check else [])]
        start_debate(
            question, file, agents, rounds, stance, task, temperature, max_new_tokens, live, sets
        )
    except KeyboardInterrupt:
        # the live view is stopped by now (start_debate), so this line lands on a clean one
        typer.secho("aborted; finished debates are saved (saie-lite logs list)", err=True)
        raise typer.Exit(130) from None
