"""``saie-lite bench``: run the chosen parts in order and rewrite the report after each."""

from __future__ import annotations

from pathlib import Path

from saie_lite.bench.cuda import bench_cuda
from saie_lite.bench.levers import bench_levers
from saie_lite.bench.parts import (
    BenchSettings,
    bench_generate,
    bench_mlx,
    bench_saie,
    bench_trl,
    bench_update_part,
)
from saie_lite.bench.report import machine, versions, write_report

PARTS = ("saie", "update", "trl", "mlx", "generate", "levers")


def run_bench(
    s: BenchSettings,
    parts: list[str],
    out_dir: Path,
    log=print,
    cuda_parts: list[str] | None = None,
) -> dict:
    report: dict = {
        "machine": machine(),
        "versions": versions(),
        "settings": s.__dict__,
        "results": {},
    }
    jobs = {
        "saie": lambda: bench_saie(s, out_dir / "runs"),
        "update": lambda: bench_update_part(s),
        "trl": lambda: bench_trl(s),
        "mlx": lambda: bench_mlx(s),
        "generate": lambda: bench_generate(s),
        "levers": lambda: bench_levers(s),
        # bench --device cuda: fills its results as it goes, the report rewritten each time
        "cuda": lambda: bench_cuda(
            s,
            cuda_parts,
            out=report["results"].setdefault("cuda", {}),
            on_result=lambda: write_report(report, out_dir),
        ),
    }
    for part in parts:
        log(f"bench: {part} ...")
        report["results"][part] = jobs[part]()
        write_report(report, out_dir)  # a part that fails later loses nothing measured before
    return report
