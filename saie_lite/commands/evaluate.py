"""Did it help: ``eval``, ``compare``, ``ablate``; and ``debate``, the discussion at
inference time."""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.commands import options

# Allowed values are read from the schema, so a new one shows in --help at once.
from saie_lite.config import choices_help
from saie_lite.track.registry import REPORT_TO_HELP


def eval_(
    task: str | None = options.task_option(),
    check: str | None = options.check_option(),
    data: str | None = options.data_option(),
    split: str | None = options.split_option(),
    limit: int | None = options.limit_option("evaluate N items (0 = all)"),
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
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
    out: Path | None = typer.Option(None, help="eval directory (same one = resume)"),
    set_: list[str] = typer.Option([], "--set", help="any config key: section.key=value"),
) -> None:
    """Measure accuracy, nll and rouge (with 95% intervals) of a learner under a strategy."""
    from saie_lite import config as config_mod
    from saie_lite.evaluate.start import eval_config, start_eval

    try:
        flags = {
            **options.data_keys(task, data, split, limit, check),
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
            "train.report_to": report_to,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        # given a run, its own data settings unless these say otherwise
        note = lambda line: typer.echo(f"note: {line}")  # noqa: E731
        cfg = eval_config({**config_mod.parse_sets(set_), **given}, run, note)
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
    task: str | None = options.task_option(),
    data: str | None = options.data_option(),
    split: str | None = options.split_option(
        "training split (evaluation: ablate.eval_split); a local file or 'bundled' trains "
        "on nodev, keeping the dev rows out"
    ),
    limit: int | None = options.limit_option("train on N examples (0 = all)"),
    check: str | None = options.check_option(),
    live: str = typer.Option("auto", help="auto | rich | plain"),
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
    set_: list[str] = typer.Option([], "--set", help="any config key: section.key=value"),
) -> None:
    """The paper's rows in one command: train sft, saie-support, saie-adversarial, saie; evaluate
    them and the base; write table.md, results.json, ablation.png."""
    from saie_lite import config as config_mod
    from saie_lite.evaluate.ablation import default_dir, run_ablation
    from saie_lite.train.runs import StopFlag
    from saie_lite.ui.ablate_view import make_ablate_view

    try:
        given = options.data_keys(task, data, split, limit, check)
        given.update({"train.report_to": report_to} if report_to is not None else {})
        cfg = config_mod.build(recipe, {**config_mod.parse_sets(set_), **given})
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
    agents: str | None = typer.Option(
        None,
        help="comma list: llama_cpp:embedded | llama_cpp:PATH.gguf | torch:MODEL | run:RUN_DIR "
        "(default: llama_cpp:embedded,llama_cpp:embedded)",
    ),
    rounds: int | None = typer.Option(None, help="rounds after the first answers (default: 1)"),
    stance: str | None = typer.Option(
        None, help="'adversarial' makes the last agent the critic; or N:adversarial"
    ),
    task: str | None = options.task_option(
        "answer format and extraction: gsm8k | commonsense_qa | mmlu | custom; "
        "default: a data file's rows choose, else gsm8k"
    ),
    data: str | None = options.data_option(
        "debate the questions of this data file (hub name or local file), checked against "
        "its answers"
    ),
    split: str | None = options.split_option(),
    limit: int | None = options.limit_option("debate N questions of the data (0 = all)"),
    check: str | None = options.check_option(),
    set_: list[str] = typer.Option(
        [], "--set", help="any config key, e.g. data.question_field=q for a data file"
    ),
    temperature: float | None = typer.Option(
        None, help="sampling temperature of every agent (default: 0.7)"
    ),
    max_new_tokens: int | None = typer.Option(None, help="longest turn (default: 192)"),
    live: str = typer.Option("auto", help="auto | rich | plain"),
) -> None:
    """Let models discuss a question: n agents, r rounds, streamed turns, majority vote."""
    from saie_lite.errors import UserError
    from saie_lite.evaluate.start import debate_config, start_debate

    try:
        # the flags' own words for their own values (the schema would name eval.* keys)
        if rounds is not None and not 0 <= rounds <= 10:
            raise UserError("--rounds must be in [0, 10]")
        if (max_new_tokens is not None and max_new_tokens < 1) or (
            temperature is not None and temperature < 0
        ):
            raise UserError("--max-new-tokens must be >= 1 and --temperature >= 0")
        if file is not None and data is not None:
            raise UserError("--file and --data both name the questions: give one")
        from saie_lite import config as config_mod

        flags = {
            **options.data_keys(task, data, split, limit, check),
            "eval.agents": agents,
            "eval.rounds": rounds,
            "eval.temperature": temperature,
            "eval.max_new_tokens": max_new_tokens,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        cfg = debate_config({**config_mod.parse_sets(set_), **given})
        start_debate(cfg, question, file, stance, live)
    except KeyboardInterrupt:
        # the live view is stopped by now (start_debate), so this line lands on a clean one
        typer.secho("aborted; finished debates are saved (saie-lite logs list)", err=True)
        raise typer.Exit(130) from None
