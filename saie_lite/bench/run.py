"""``saie-lite bench``: run the chosen parts in order and rewrite the report after each."""

from __future__ import annotations

from pathlib import Path

from saie_lite.bench.cuda import CUDA_PARTS, bench_cuda, require_cuda
from saie_lite.bench.generation import bench_generate
from saie_lite.bench.levers import bench_levers
from saie_lite.bench.parts import (
    BenchSettings,
    bench_mlx,
    bench_saie,
    bench_trl,
    bench_update_part,
)
from saie_lite.bench.report import machine, versions, write_report
from saie_lite.errors import UserError

PARTS = ("saie", "update", "trl", "mlx", "generate", "levers")
CPU_DEFAULT = "saie,update,trl,mlx,generate"


def choose_parts(device: str, only: str | None) -> tuple[list[str], list[str] | None]:
    """``--device`` and ``--only`` -> (parts for ``run_bench``, the CUDA parts in order or
    None). A wrong name is one line; ``cuda`` refuses without a GPU, after the names."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, not {device!r}")
    known = CUDA_PARTS if device == "cuda" else PARTS
    default = ",".join(CUDA_PARTS) if device == "cuda" else CPU_DEFAULT
    parts = [p.strip() for p in (only or default).split(",") if p.strip()]
    bad = [p for p in parts if p not in known]
    if not parts:
        raise UserError(f"--only names no bench part; {device} parts: {', '.join(known)}")
    if bad:
        raise UserError(
            f"unknown {device} bench part(s) {', '.join(bad)}; parts: {', '.join(known)}"
        )
    if device == "cpu":
        return parts, None
    require_cuda()
    return ["cuda"], parts


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
    write_report(report, out_dir)  # an --out that cannot be written fails now, not after the parts
    for part in parts:
        log(f"bench: {part} ...")
        report["results"][part] = jobs[part]()
        write_report(report, out_dir)  # a part that fails later loses nothing measured before
    return report
