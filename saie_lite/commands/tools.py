"""``export``, ``bench`` and ``version``: what a trained run becomes, and how fast it runs."""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.errors import UserError


def export(
    run_dir: Path = typer.Argument(..., help="a training run directory"),
    to: str = typer.Option("gguf", help="hf | gguf | mlx"),
    quant: str = typer.Option(
        "f16", help="gguf: f16 | f32 | bf16 | q8_0 | q4_0 (q4_0 via llama.cpp)"
    ),
    out: Path | None = typer.Option(None, help="output directory (default RUN/export/...)"),
) -> None:
    """Export the trained learner: merged safetensors, GGUF (+ Ollama Modelfile), or MLX."""
    from saie_lite.export.formats import export as do_export

    for path in do_export(run_dir, to, quant, out):
        typer.echo(f"wrote {path}")


def bench(
    model: str = typer.Option("embedded", help="learner model for every part"),
    only: str | None = typer.Option(
        None,
        help="comma list of parts; cpu: saie,update,trl,mlx,generate (default) and levers; "
        "cuda: smollm2-135m,qwen2-0.5b,qwen2-1.5b,saie (default: all)",
    ),
    examples: int = typer.Option(
        16,
        help="SAIE vs SFT part: examples per mode (16 = four timed steps of 4, so a "
        "snapshot refreshed every 4 updates is rebuilt once while timed)",
    ),
    modes: str = typer.Option(
        "", help="SAIE vs SFT part (cpu): comma list of its modes (sft always runs); default all"
    ),
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

    for name, value, low in (("--examples", examples, 1), ("--steps", steps, 1),
                             ("--batch", batch, 1), ("--max-len", max_len, 32),
                             ("--new-tokens", new_tokens, 1)):  # fmt: skip
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    parts, cuda_parts = choose_parts(device, only)
    from saie_lite.bench.modes import chosen_modes

    chosen_modes(modes)  # a wrong name is one line now, not after the other parts
    settings = BenchSettings(model, examples, steps, batch, max_len, new_tokens, modes=modes)
    target = out or home() / "bench" / _time.strftime("%Y%m%d-%H%M%S")
    report = run_bench(settings, parts, Path(target), cuda_parts=cuda_parts)
    from saie_lite.bench.report import markdown

    typer.echo(markdown(report))
    typer.echo(f"wrote {Path(target) / 'bench.json'} and bench.md")


def version() -> None:
    """Print the saie-lite version number alone (for scripts; --version says the name too)."""
    from importlib.metadata import version as v

    typer.echo(v("saie-lite"))


def print_version(value: bool) -> None:
    """``--version``'s callback: Typer calls it with the flag's value."""
    if value:
        from importlib.metadata import version as v

        typer.echo(f"saie-lite {v('saie-lite')}")
        raise typer.Exit()
