"""What the trackers are fed: a training run per update (from the same callbacks that
draw the live view), an evaluation's every metric with its interval, an ablation's rows.
Nothing here is in the training loop: the view is wrapped, as ``WithRemarkFigures`` is."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

from saie_lite import __version__
from saie_lite import config as config_mod
from saie_lite.config import Config
from saie_lite.remarks import rates
from saie_lite.track.base import RunInfo, Trackers
from saie_lite.track.registry import names, open_trackers

DIAGNOSTICS = ("echo", "echo_rouge", "on_stance", "degenerate")


def hyper_parameters(cfg: Config, folder: Path) -> dict:
    """The whole config as dotted keys, plus where the run lives and the version. The
    config holds the NAME of the variable with the partner's key (partner.api_key_env),
    never the key, so nothing secret is sent."""
    out = {k: ("" if v is None else v) for k, v in config_mod.flat(cfg).items()}
    out["saie_lite.version"] = __version__
    out["saie_lite.folder"] = str(folder)
    return out


def step_values(row: dict, diags: list[tuple[str, dict]], lr: float) -> dict[str, float]:
    """One update's scalars: the row the loop passes to ``on_step`` and the remark
    diagnostics of the exchanges since the previous update."""
    total = row["t_generate"] + row["t_remark"] + row["t_update"]
    out = {
        "train/loss": row["loss"],
        "train/lr": lr,  # constant: AdamW at train.lr, no schedule (backends)
        "train/sequences": row["n_sequences"],
        "train/target_tokens": row["n_target_tokens"],
        "time/generate_s": row["t_generate"],
        "time/remark_s": row["t_remark"],
        "time/update_s": row["t_update"],
        "speed/update_tokens_per_s": row["n_target_tokens"] / row["t_update"]
        if row["t_update"] > 0
        else 0.0,
        "speed/tokens_per_s": row["n_target_tokens"] / total if total > 0 else 0.0,
        "remarks/missing": row.get("missing_remarks") or 0,
    }
    out.update(remark_values(rates(diags)))
    return out


def remark_values(r: dict) -> dict[str, float]:
    """``remarks/<stance>/<diagnostic>`` rates and ``remarks/<stance>/n`` counts."""
    out = {}
    for stance, figures in r.items():
        out[f"remarks/{stance}/n"] = figures["n"]
        for d in DIAGNOSTICS:
            out[f"remarks/{stance}/{d}"] = figures[d]
    return out


class WithTrackers:
    """The view (or any callbacks), with every update also sent to the trackers."""

    def __init__(self, view, trackers: Trackers, lr: float):
        self._view, self._trackers, self._lr = view, trackers, lr
        self._diags: list[tuple[str, dict]] = []
        self.status = "failed"  # until on_end says otherwise

    def __getattr__(self, name):
        return getattr(self._view, name)

    def on_exchange(self, ex: dict) -> None:
        self._view.on_exchange(ex)
        # a batch skipped whole (nothing to train) has no update: its remarks count
        # with the next one's
        self._diags += [(st, d) for st, d in ex.get("diagnostics") or [] if d]

    def on_step(self, row: dict) -> None:
        self._view.on_step(row)
        self._trackers.log(step_values(row, self._diags, self._lr), row["step"])
        self._diags = []

    def on_end(self, summary: dict) -> None:
        self._view.on_end(summary)  # WithRemarkFigures adds the whole run's remark figures
        self.status = summary["status"]
        values = {f"time/total_{k}_s": v for k, v in summary["seconds"].items()}
        values["train/updates"] = summary["step"]
        values["remarks/missing"] = summary.get("missing_remarks") or 0
        values.update(remark_values(summary.get("remarks") or {}))
        self._trackers.summary(values)


@contextlib.contextmanager
def tracked_training(cfg: Config, run_dir: Path, callbacks, note):
    """``callbacks`` wrapped to feed ``train.report_to``'s trackers for the run in
    ``run_dir`` (unchanged when none is asked for, or when there are no callbacks: a
    data-parallel process that is not the main one)."""
    if callbacks is None or not names(cfg.train.report_to):
        yield callbacks
        return
    info = RunInfo(Path(run_dir).name, "train", Path(run_dir), hyper_parameters(cfg, run_dir))
    trackers = open_trackers(cfg.train.report_to, info, note)
    fed = WithTrackers(callbacks, trackers, cfg.train.lr)
    try:
        yield fed
    finally:
        trackers.finish(fed.status)


def eval_values(summary: dict) -> dict[str, float]:
    """Every metric of an evaluation with its 95% interval, and the two readings."""
    out: dict[str, float] = {"eval/n": summary["n"]}
    for name, m in (summary.get("metrics") or {}).items():
        if m.get("mean") is None:
            continue
        out[f"eval/{name}"] = m["mean"]
        lo, hi = m.get("ci95") or (None, None)
        if lo is not None and hi is not None:
            out[f"eval/{name}_ci95_low"], out[f"eval/{name}_ci95_high"] = lo, hi
    for reading in ("strict", "flexible"):
        if reading in summary:
            out[f"eval/{reading}_accuracy"] = summary[reading]["accuracy"]
    out["eval/seconds"] = summary.get("seconds", 0.0)
    out["eval/tokens_generated"] = summary.get("tokens_generated", 0)
    return out


def track_eval(cfg: Config, out_dir: Path, summary: dict, note, run_dir=None) -> None:
    """One tracker run for an evaluation, with its summary's figures."""
    if not names(cfg.train.report_to):
        return
    params = hyper_parameters(cfg, out_dir)
    if run_dir is not None:
        params["saie_lite.evaluated_run"] = str(run_dir)
    trackers = open_trackers(
        cfg.train.report_to, RunInfo(out_dir.name, "eval", out_dir, params), note
    )
    values = eval_values(summary)
    trackers.log(values, 0)
    trackers.summary(values)
    trackers.finish(summary.get("status", "finished"))


def track_ablation(cfg: Config, out: Path, results: dict, note) -> None:
    """One tracker run per system (its updates read back from its run's store, its
    evaluation, its row of the table), grouped by the experiment, and one with the table."""
    if not names(cfg.train.report_to):
        return
    from saie_lite.store import Store

    group = out.name
    # the other strategies' means beside the top block's: eval-debate/accuracy, ...
    others: dict[str, dict] = {}
    for name, block in (results.get("strategies") or {}).items():
        for r in block["rows"]:
            for m, v in r["metrics"].items():
                if v.get("mean") is not None:
                    others.setdefault(r["system"], {})[f"eval-{name}/{m}"] = v["mean"]
    for row in results["rows"]:
        system = row["system"]
        c = copy.deepcopy(cfg)
        run_dir = out / "runs" / system
        folder = run_dir if system != "base" else out / "evals" / system
        if system != "base":
            c.method.mode = system
        info = RunInfo(f"{group}/{system}", "ablation", folder, hyper_parameters(c, folder), group)
        trackers = open_trackers(cfg.train.report_to, info, note)
        if not trackers:
            continue
        if (run_dir / "saie.sqlite").is_file():
            store = Store(run_dir / "saie.sqlite", reader=True)
            try:
                steps = store.steps()
            finally:
                store.close()
            for s in steps:
                trackers.log(step_values(s, [], cfg.train.lr), s["step"])
        values = {
            f"eval/{m}": v["mean"] for m, v in row["metrics"].items() if v.get("mean") is not None
        }
        for m, v in row["metrics"].items():
            lo, hi = v.get("ci95") or (None, None)
            if lo is not None and hi is not None:
                values[f"eval/{m}_ci95_low"], values[f"eval/{m}_ci95_high"] = lo, hi
        values.update(
            {"train/updates": row["updates"], "train/target_tokens": row["target_tokens"]}
        )
        values["time/train_s"], values["time/eval_s"] = row["train_seconds"], row["eval_seconds"]
        values.update(remark_values(row["remarks"]))
        values.update(others.get(system, {}))
        for versus, ps in row["p"].items():
            for m, p in ps.items():
                key = "mcnemar_p" if "mcnemar_p" in p else "t_p"  # seeds: no McNemar
                values[f"p/{versus.replace(' ', '_')}/{m}"] = p[key]
        trackers.log(values, 0)
        trackers.summary(values)
        trackers.finish("finished")
    info = RunInfo(f"{group}/table", "ablation", out, hyper_parameters(cfg, out), group)
    trackers = open_trackers(cfg.train.report_to, info, note)
    columns, rows = table_rows(results)
    trackers.table("ablation", columns, rows)
    trackers.finish("finished")


def table_rows(results: dict) -> tuple[list[str], list[list]]:
    """table.md's figures as a table: one row per system, each metric's mean and interval."""
    ms = results["metrics"]
    columns = ["system"]
    for m in ms:
        columns += [m, f"{m} ci95 low", f"{m} ci95 high"]
    columns += ["updates", "target tokens", "train seconds"]
    rows = []
    for r in results["rows"]:
        cells: list = [r["system"]]
        for m in ms:
            v = r["metrics"][m]
            lo, hi = v.get("ci95") or (None, None)
            cells += [v.get("mean"), lo, hi]
        cells += [r["updates"], r["target_tokens"], round(r["train_seconds"], 3)]
        rows.append(cells)
    return columns, rows
