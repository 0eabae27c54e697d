"""The ``saie-lite`` command. Thin: parse flags, build the config, call one core function.

Heavy libraries (torch, transformers, llama_cpp, datasets) are imported inside commands
so that ``saie-lite --help`` answers at once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from saie_lite.errors import UserError


class _App(typer.Typer):
    """Every command ends a user's mistake in one line with exit code 2, never a traceback:
    ``UserError`` carries its own line; an ``OSError`` no check foresaw (a full disk, a
    vanished file) still gets one, naming the file."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                try:
                    return fn(*a, **k)
                except UserError as e:
                    fail(str(e))
                except OSError as e:
                    where = f" ({e.filename})" if e.filename else ""
                    fail(
                        f"{e.strerror or type(e).__name__}{where}: check the path, its "
                        "permissions and free space, then run the command again"
                    )
                except Exception as e:
                    line = _storage_failure(e)
                    if line is None:
                        raise  # a bug: its traceback is what a report needs
                    fail(line)

            return register(guarded)

        return decorate


app = _App(
    add_completion=False,
    no_args_is_help=True,
    help="saie-lite: fine-tune a small LM from supportive and adversarial discussions (SAIE).",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version as v

        typer.echo(f"saie-lite {v('saie-lite')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """saie-lite: fine-tune a small LM from supportive and adversarial discussions (SAIE)."""


def _storage_failure(
    e: Exception,
    again: str = "run the command again; a stopped train run goes on with "
    "saie-lite train --resume RUN_DIR",
) -> str | None:
    """One line for the storage errors that are not ``OSError``: SQLite's (a full disk
    under a run's database) and safetensors' (a full disk, a damaged weights file)."""
    import sqlite3

    if isinstance(e, sqlite3.Error):
        what = f"database error ({e})"
    elif type(e).__name__ == "SafetensorError":  # safetensors is imported only by some commands
        what = f"a weights file could not be read or written ({e})"
    else:
        return None
    return f"{what}: free disk space (or restore the damaged file), then {again}"


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="YAML recipe (see recipes/)"),
    mode: str | None = typer.Option(None, help="sft | saie | saie-support | saie-adversarial"),
    backend: str | None = typer.Option(None, help="learner backend: torch | scripted | ..."),
    model: str | None = typer.Option(None, help="learner: hub id, local dir, or 'embedded'"),
    partner: str | None = typer.Option(None, help="partner backend: llama_cpp | openai | self"),
    partner_model: str | None = typer.Option(
        None,
        help="partner GGUF path or 'embedded'; --partner openai: the server's model name "
        "(default: the one it lists)",
    ),
    partner_url: str | None = typer.Option(
        None, help="--partner openai: server base URL, e.g. http://127.0.0.1:8080/v1"
    ),
    data: str | None = typer.Option(
        None, help="hub name, .jsonl/.json/.csv/.parquet path, or 'bundled'"
    ),
    task: str | None = typer.Option(
        None, help="gsm8k | commonsense_qa | mmlu | custom (your own data, see data.* keys)"
    ),
    check: str | None = typer.Option(
        None, help="--task custom: number | choice | exact | contains | regex:PATTERN | none"
    ),
    limit: int | None = typer.Option(None, help="use N examples (0 = all)"),
    rounds: int | None = typer.Option(None, help="discussion rounds"),
    max_steps: int | None = typer.Option(None, help="stop after N updates"),
    run_dir: Path | None = typer.Option(None, help="where to write the run"),
    resume: Path | None = typer.Option(None, help="continue the run in this directory"),
    live: str | None = typer.Option(None, help="auto | rich | plain | quiet"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="scripted models: check config, data and view"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="any config key: section.key=value (repeatable)"
    ),
) -> None:
    """Train a learner with SAIE: warm-up, then discussion rounds with a partner."""
    from saie_lite import config as config_mod
    from saie_lite.train.runs import new_run_dir, saved_config, start_training
    from saie_lite.ui.train_view import make_view

    flags = {
        "method.mode": mode,
        "learner.backend": backend,
        "learner.model": model,
        "partner.backend": partner,
        "partner.model": partner_model,
        "partner.url": partner_url,
        "data.path": data,
        "data.task": task,
        "data.check": check,
        "data.limit": limit,
        "method.rounds": rounds,
        "train.max_steps": max_steps,
        "run.dir": str(resume or run_dir) if (resume or run_dir) else None,
        "run.live": live,
    }
    target = None
    try:
        # A flag left out must not undo the same key given with --set.
        given = {k: v for k, v in flags.items() if v is not None}
        overrides = {**config_mod.parse_sets(set_), **given}
        if resume:
            if recipe:
                raise UserError("--resume takes the run's saved config; drop --recipe")
            saved = saved_config(resume)
            cfg = config_mod.build(None, overrides, base=saved)
            safe, unsafe = config_mod.resume_changes(config_mod.build(None, None, saved), cfg)
            if unsafe:
                raise UserError(
                    f"--resume cannot change {', '.join(unsafe)}: the resumed run would no "
                    "longer match its first part. Drop those flags, or start a new run. "
                    f"Keys a resume may change: {', '.join(config_mod.SAFE_ON_RESUME[:-1])}"
                )
            for key in safe:
                typer.echo(f"resume: {key} changed to {config_mod.flat(cfg)[key]!r}")
        else:
            cfg = config_mod.build(recipe, overrides)
        target = Path(resume) if resume else new_run_dir(cfg)
        cfg.run.dir = str(target)
        summary = start_training(cfg, target, bool(resume), dry_run, make_view(cfg.run.live))
    except UserError as e:
        fail(str(e))
    except Exception as e:
        # the updates made so far are checkpointed (train.loop): say how to go on
        again = f"saie-lite train --resume {target}" if target else "run the command again"
        line = _storage_failure(e, again)
        if line is None:
            raise
        fail(line)
    except KeyboardInterrupt:
        typer.secho("aborted; the last checkpoint is intact", fg="yellow", err=True)
        raise typer.Exit(130) from None
    if summary["status"] == "stopped":
        raise typer.Exit(130)


@app.command("eval")
def eval_(
    task: str = typer.Option("gsm8k", help="gsm8k | commonsense_qa | mmlu | custom (own data)"),
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
    strategy: str | None = typer.Option(
        None, help="single | self-consistency | self-discussion | debate"
    ),
    k: int | None = typer.Option(None, help="self-consistency samples"),
    rounds: int | None = typer.Option(None, help="self-discussion / debate rounds"),
    agents: str | None = typer.Option(None, help="debate agents, e.g. learner,llama_cpp:embedded"),
    temperature: float | None = typer.Option(None, help="sampling temperature"),
    scoring: str | None = typer.Option(None, help="generate | loglik (multiple choice)"),
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
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        typer.secho("aborted; finished items are saved", fg="yellow", err=True)
        raise typer.Exit(130) from None
    if summary["status"] == "stopped":
        raise typer.Exit(130)


@app.command()
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

    try:
        sa, sb = load_summary(a), load_summary(b)
        print_compare(str(a), str(b), sa, sb, do_compare(sa, sb, shared_only))
    except UserError as e:
        fail(str(e))


@app.command()
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
        with StopFlag(lambda: view.note("stopping after this step (Ctrl-C again aborts)")) as flag:
            res = run_ablation(cfg, target, view, flag)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        typer.secho(
            "aborted; finished parts are kept, run the same command to continue",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(130) from None
    if res["status"] == "stopped":
        raise typer.Exit(130)
    typer.echo((target / "table.md").read_text())


@app.command("debate")
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
    task: str = typer.Option(
        "gsm8k", help="answer format and extraction: gsm8k | commonsense_qa | mmlu | custom"
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
    except UserError as e:
        fail(str(e))
    except (KeyboardInterrupt, EOFError):
        raise typer.Exit(130) from None


logs_app = _App(help="Saved debates, evaluations and training runs.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")


@logs_app.command("list")
def logs_list() -> None:
    """List saved debates, evaluations and runs."""
    from saie_lite.evaluate.start import list_logs

    typer.echo(list_logs())


@logs_app.command("show")
def logs_show(debate_id: int = typer.Argument(..., help="debate number from 'logs list'")) -> None:
    """Print one debate transcript."""
    from saie_lite.evaluate.start import get_debate
    from saie_lite.evaluate.transcripts import to_markdown

    try:
        typer.echo(to_markdown(get_debate(debate_id)))
    except UserError as e:
        fail(str(e))


@logs_app.command("remarks")
def logs_remarks(run_dir: Path = typer.Argument(..., help="a training run directory")) -> None:
    """A run's remark diagnostics: echo, on-stance and degenerate rates per stance."""
    from saie_lite.evaluate.start import run_remarks

    typer.echo(run_remarks(run_dir))


@logs_app.command("export")
def logs_export(
    what: str = typer.Argument(
        ..., help="debate number from 'logs list', or a run directory with --format dataset"
    ),
    format: str = typer.Option("md", help="md | json (a debate) | dataset (a training run)"),
    out: Path | None = typer.Option(
        None, help="write here instead of stdout (dataset: a directory)"
    ),
) -> None:
    """Export a debate transcript (Markdown, JSON), or a run's discussions as a dataset."""
    if format == "dataset":
        from saie_lite.export.dataset import export_dataset

        typer.echo(f"wrote {export_dataset(Path(what), out)}")
        return
    from saie_lite.evaluate.start import get_debate
    from saie_lite.evaluate.transcripts import to_json, to_markdown

    if format not in ("md", "json"):
        raise UserError(f"--format must be md, json or dataset, got {format!r}")
    if not what.isdigit():
        raise UserError(
            f"{what!r} is not a debate number: see 'saie-lite logs list' "
            "(a run directory needs --format dataset)"
        )
    d = get_debate(int(what))
    text = to_json(d) if format == "json" else to_markdown(d)
    if out:
        out.write_text(text)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a training run directory"),
    to: str = typer.Option("gguf", help="hf | gguf | mlx"),
    quant: str = typer.Option("f16", help="gguf: f16 | f32 | q8_0 | q4_0 (q4_0 via llama.cpp)"),
    out: Path | None = typer.Option(None, help="output directory (default RUN/export/...)"),
) -> None:
    """Export the trained learner: merged safetensors, GGUF (+ Ollama Modelfile), or MLX."""
    from saie_lite.export.formats import export as do_export

    try:
        for path in do_export(run_dir, to, quant, out):
            typer.echo(f"wrote {path}")
    except UserError as e:
        fail(str(e))


@app.command()
def bench(
    model: str = typer.Option("embedded", help="learner model for every part"),
    only: str | None = typer.Option(
        None,
        help="comma list of parts; cpu: saie,update,trl,mlx,generate (default) and levers; "
        "cuda: smollm2-135m,qwen2-0.5b,qwen2-1.5b,saie (default: all)",
    ),
    examples: int = typer.Option(8, help="SAIE vs SFT part: examples per mode"),
    steps: int = typer.Option(3, help="timed updates per measurement (after one warm-up)"),
    batch: int = typer.Option(8, help="sequences per update"),
    max_len: int = typer.Option(256, help="training sequence length cap"),
    new_tokens: int = typer.Option(64, help="generation part: new tokens per prompt"),
    out: Path | None = typer.Option(
        None, help="report directory (default $SAIE_LITE_HOME/bench/<time>)"
    ),
    device: str = typer.Option(
        "cpu",
        help="cpu: the parts in --only; cuda: QLoRA and bf16 LoRA on real model shapes "
        "against TRL, generation and peak GPU memory (needs a CUDA GPU)",
    ),
) -> None:
    """Measure the time split, update and generation throughput against TRL, mlx-lm and llama.cpp."""
    import time as _time

    from saie_lite.bench.run import BenchSettings, choose_parts, run_bench
    from saie_lite.paths import home

    try:
        for name, value, low in (("--examples", examples, 1), ("--steps", steps, 1),
                                 ("--batch", batch, 1), ("--max-len", max_len, 32),
                                 ("--new-tokens", new_tokens, 1)):  # fmt: skip
            if value < low:
                raise UserError(f"{name} must be >= {low}, got {value}")
        parts, cuda_parts = choose_parts(device, only)
        settings = BenchSettings(model, examples, steps, batch, max_len, new_tokens)
        target = out or home() / "bench" / _time.strftime("%Y%m%d-%H%M%S")
        report = run_bench(settings, parts, Path(target), cuda_parts=cuda_parts)
    except UserError as e:
        fail(str(e))
    from saie_lite.bench.report import markdown

    typer.echo(markdown(report))
    typer.echo(f"wrote {Path(target) / 'bench.json'} and bench.md")


@app.command()
def version() -> None:
    """Print the saie-lite version (as --version does)."""
    _print_version(True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
