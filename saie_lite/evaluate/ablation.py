"""``saie-lite ablate``: the paper's comparison rows in one command (issue 14).

From one recipe: train ``sft``, ``saie-support``, ``saie-adversarial`` and ``saie`` on
the same examples with the same number of updates (the loop makes every batch one update
in every mode), evaluate the base learner and each run on the same held-out items with
every metric, and write ``table.md``, ``results.json`` and ``ablation.png``.

Everything lives in one experiment directory: ``runs/<system>/`` (ordinary run
directories) and ``evals/<system>/`` (ordinary eval directories). Running the command
again resumes: a finished run (``finished.json``) or evaluation (a finished
``summary.json`` over the same items) is reused, a stopped one continues from its last
checkpoint or item, and the settings must be the same.
"""

from __future__ import annotations

import copy
import gc
import json
import time
from pathlib import Path

from saie_lite import config as config_mod
from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.fsutil import atomic_write_text
from saie_lite.protocols import Callbacks

TRAINED = ("sft", "saie-support", "saie-adversarial", "saie")


def default_dir(cfg: Config, recipe: Path | None) -> Path:
    from saie_lite.paths import home

    if cfg.ablate.dir:
        return Path(cfg.ablate.dir).expanduser()
    name = Path(recipe).stem if recipe else "ablate"
    return home() / "ablations" / name


def eval_config(cfg: Config) -> Config:
    """The training config with the held-out split and size of the evaluation."""
    e = copy.deepcopy(cfg)
    e.data.split, e.data.limit = cfg.ablate.eval_split, cfg.ablate.eval_limit
    return e


def check_settings(cfg: Config, out: Path, note=lambda line: None) -> None:
    """A resumed experiment must ask for what its finished parts were made with: the
    rule every command resumes by (``config.resume_changes``, an ablation's keys)."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = config_mod.build(None, None, config_mod.load_yaml(saved_path))
    safe, unsafe = config_mod.resume_changes(saved, cfg, "ablate")
    if unsafe:
        raise UserError(
            f"{out} holds an ablation with other settings ({', '.join(sorted(unsafe))}): pass "
            "another --out, or drop the changes to resume it"
        )
    now = config_mod.flat(cfg)
    for key in safe:
        note(f"resume: {key} changed to {now[key]!r}")


def held_out_split(cfg: Config, note) -> None:
    """Train on the rows the evaluation never sees. A local file's (or the bundled rows')
    split ``train`` is every row, dev rows included: the ablation always evaluates on
    held-out rows, so it trains on ``nodev`` instead (what ``train`` suggests), and says so.
    A split named otherwise is left as asked (and refused below when it overlaps)."""
    from saie_lite.tasks.common import is_local

    d = cfg.data
    local = d.path == "bundled" or is_local(d.path)
    if local and d.split == "train" and cfg.ablate.eval_split == "dev":
        d.split = "nodev"
        note(
            "training on data.split=nodev, evaluating on the held-out dev rows "
            "(split 'train' of a local file or the bundled rows is every row, dev ones too)"
        )


class _Progress(Callbacks):
    """Training callbacks that only move the experiment's one progress bar."""

    def __init__(self, view, system: str):
        self.view, self.system = view, system

    def on_step(self, row: dict) -> None:
        self.view.advance(1, f"train {self.system} {row['batches_done']}/{row['total']}")

    def on_event(self, message: str) -> None:
        self.view.note(f"{self.system}: {message}")


def run_facts(run_dir: Path) -> dict:
    """Updates, target tokens, wall time, loss curve and remark figures of a run."""
    from saie_lite.remarks import rates
    from saie_lite.store import Store

    store = Store(run_dir / "saie.sqlite")
    try:
        steps = store.steps()
        remarks = rates(store.remark_diagnostics())
    finally:
        store.close()
    return {
        "updates": len(steps),
        "target_tokens": sum(s["n_target_tokens"] for s in steps),
        "seconds": sum(s["t_generate"] + s["t_remark"] + s["t_update"] for s in steps),
        "loss": [[s["step"], s["loss"]] for s in steps],
        "remarks": remarks,
    }


def train_system(cfg: Config, system: str, out: Path, examples, view, stop) -> dict | None:
    """Train one row (or reuse it); None when stopped."""
    from saie_lite.store import Store
    from saie_lite.train.checkpoint import latest
    from saie_lite.train.loop import train
    from saie_lite.train.runs import build_backends

    run_dir = out / "runs" / system
    done = run_dir / "finished.json"
    if done.is_file():
        return json.loads(done.read_text())
    c = copy.deepcopy(cfg)
    c.method.mode, c.run.dir = system, str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from saie_lite.locks import hold

    with hold(run_dir, "run", lambda line: view.note(f"{system}: {line}")):
        config_mod.save(c, run_dir / "config.yaml")
        if latest(run_dir) is not None:
            view.note(f"{system}: resuming its run")
        learner, partner = build_backends(c, False, run_dir)
        store = Store(run_dir / "saie.sqlite")
        try:
            summary = train(
                c, learner, partner, examples, store, run_dir, _Progress(view, system), stop
            )
        finally:
            store.close()
            del learner, partner
            gc.collect()
    if summary["status"] != "finished":
        return None
    facts = run_facts(run_dir)
    atomic_write_text(done, json.dumps(facts))
    return facts


def eval_system(ecfg: Config, system: str, out: Path, examples, view, stop) -> dict | None:
    """Evaluate one row (or reuse its finished summary); None when stopped."""
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.evaluation import evaluate
    from saie_lite.store import Store
    from saie_lite.tasks import get_task

    eval_dir = out / "evals" / system
    path = eval_dir / "summary.json"
    if path.is_file():
        s = json.loads(path.read_text())
        if s.get("status") == "finished" and s.get("n") == len(examples):
            return s
    run_dir = None if system == "base" else out / "runs" / system
    agents = build_agents(ecfg, ["learner"], run_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)

    def on_batch(done: int, total: int, rows: list) -> None:
        if rows:
            view.advance(len(rows), f"eval {system} {done}/{total}")

    from saie_lite.locks import hold

    with hold(eval_dir, "evaluation", lambda line: view.note(f"{system}: {line}")):
        store = Store(eval_dir / "saie.sqlite")
        try:
            summary = evaluate(
                ecfg, get_task(ecfg.data), examples, agents, store, system, eval_dir, on_batch, stop
            )
        finally:
            store.close()
            del agents
            gc.collect()
    return summary if summary["status"] == "finished" else None


def units_done(out: Path, systems: list[str], n_eval: int) -> int:
    """Work already finished in the experiment directory (for the progress bar)."""
    from saie_lite.store import Store

    done = 0
    for s in systems:
        for db, sql in (
            (out / "runs" / s / "saie.sqlite", "SELECT COUNT(*) FROM steps"),
            (out / "evals" / s / "saie.sqlite", "SELECT COUNT(*) FROM eval_items"),
        ):
            if db.is_file():
                store = Store(db)
                try:
                    done += store.db.execute(sql).fetchone()[0]
                finally:
                    store.close()
    return done


def run_ablation(cfg: Config, out: Path, view, stop=lambda: False) -> dict:
    from saie_lite.paths import EMBEDDED, writable_dir
    from saie_lite.tasks.common import splits_overlap
    from saie_lite.track.registry import require
    from saie_lite.train.runs import resolve_backend, settle_partner_model

    require(cfg.train.report_to)  # a tracker's missing library: said before anything is written
    systems = cfg.ablate.system_list
    trained = [s for s in systems if s != "base"]
    held_out_split(cfg, view.note)
    if splits_overlap(cfg.data.path, cfg.data.split, cfg.ablate.eval_split):
        raise UserError(
            f"training and evaluation would share rows (data.split={cfg.data.split}, "
            f"ablate.eval_split={cfg.ablate.eval_split}): with a local file or the bundled "
            "rows, train on data.split=nodev and evaluate on dev; on the hub, name two "
            "different splits"
        )
    resolve_backend(cfg, view.note)
    for line in config_mod.unusual(cfg):  # allowed, but said before anything trains
        view.note(line)
    from saie_lite.tasks.detect import settle_task

    if chosen := settle_task(cfg):  # a data file given no task: chosen before it is saved
        view.note(chosen)
    saved = out / "config.yaml"
    if saved.is_file():  # a resumed ablation goes on with the partner model it started with
        prior = (config_mod.load_yaml(saved).get("partner") or {}).get("model")
        if cfg.partner.model.startswith(EMBEDDED) and isinstance(prior, str):
            cfg.partner.model = prior
    else:
        settle_partner_model(cfg, view.note)
    writable_dir(out, "ablation directory", "pass another --out, or set SAIE_LITE_HOME")
    from saie_lite.locks import hold

    # One process per experiment: two would train and evaluate every row twice. Its runs
    # and evaluations (runs/SYSTEM, evals/SYSTEM) are locked too, each while it is written,
    # against a `train --resume` or an `eval` of one of them meanwhile.
    with hold(out, "ablation", view.note):
        return _run_ablation(cfg, out, view, stop, systems, trained)


def _run_ablation(cfg: Config, out: Path, view, stop, systems, trained) -> dict:
    from saie_lite.places import remember
    from saie_lite.train.loop import schedule
    from saie_lite.train.runs import prepare_examples

    remember("ablations", out)
    check_settings(cfg, out, view.note)
    config_mod.save(cfg, out / "config.yaml")
    examples, _ = prepare_examples(cfg)
    ecfg = eval_config(cfg)
    eval_examples, _ = prepare_examples(ecfg)
    from saie_lite.train.memory import check_memory

    check_memory(cfg, examples, view.note, "ablate")  # before the first model loads
    batches = schedule(len(examples), cfg)
    n_updates = len(batches)
    # Every unit in the order it runs, by kind, for the progress bar's ETA.
    kinds = [
        "plain" if s == "sft" or b.phase == "warmup" else "discussion"
        for s in trained
        for b in batches
    ] + ["eval"] * (len(eval_examples) * len(systems))
    view.start(kinds, units_done(out, systems, len(eval_examples)))
    view.note(
        f"{len(systems)} systems ({', '.join(systems)}): {len(examples)} training examples, "
        f"{n_updates} updates each; {len(eval_examples)} held-out items ({ecfg.data.split})"
    )
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    status = "finished"
    for s in trained:
        facts = train_system(cfg, s, out, examples, view, stop)
        if facts is None:
            status = "stopped"
            break
        runs[s] = facts
    if status == "finished":
        for s in systems:
            summary = eval_system(ecfg, s, out, eval_examples, view, stop)
            if summary is None:
                status = "stopped"
                break
            evals[s] = summary
    if status != "finished":
        view.finish(
            f"stopped; run the same command again to continue (finished parts are kept): {out}"
        )
        return {"status": "stopped", "dir": str(out)}
    results = assemble(systems, runs, evals, cfg, time.perf_counter() - t0)
    write_outputs(results, out)
    from saie_lite.track.feeds import track_ablation

    track_ablation(cfg, out, results, view.note)  # mirrors the files just written
    view.finish(f"wrote {out / 'table.md'}, {out / 'results.json'} and {out / 'ablation.png'}")
    return results


def _pvals(a: dict, b: dict) -> dict:
    """Paired p-values of B against A for every shared metric."""
    from saie_lite.evaluate.pairing import compare

    c = compare(a, b)
    out = {}
    if "strict" in c and "accuracy" in a.get("metrics", {}) and "accuracy" in b.get("metrics", {}):
        out["accuracy"] = {"mcnemar_p": c["strict"]["p_value"], "diff": c["strict"]["diff"]}
    for m, p in c["metrics"].items():
        out[m] = {
            "t_p": p["t_p"],
            "wilcoxon_p": p["wilcoxon_p"],
            "diff": p["diff"],
            "diff_ci": p["diff_ci"],
        }
    return out


def assemble(systems, runs, evals, cfg: Config, seconds: float) -> dict:
    rows = []
    metrics = [m for m in ("accuracy", "nll", "rouge") if m in evals[systems[0]]["metrics"]]
    for s in systems:
        r = runs.get(s, {"updates": 0, "target_tokens": 0, "seconds": 0.0, "loss": []})
        row = {
            "system": s,
            "metrics": {m: evals[s]["metrics"][m] for m in metrics},
            "updates": r["updates"],
            "target_tokens": r["target_tokens"],
            "train_seconds": r["seconds"],
            "eval_seconds": evals[s]["seconds"],
            "loss": r["loss"],
            "remarks": r.get("remarks") or {},
            "p": {},
        }
        if s != "sft" and "sft" in evals:
            row["p"]["vs sft"] = _pvals(evals["sft"], evals[s])
        if s == "saie":
            for single in ("saie-support", "saie-adversarial"):
                if single in evals:
                    row["p"][f"vs {single}"] = _pvals(evals[single], evals[s])
        rows.append(row)
    return {
        "status": "finished",
        "n_eval": evals[systems[0]]["n"],
        "metrics": metrics,
        "rows": rows,
        "seconds": seconds,
        "settings": {
            "learner": cfg.learner.model,
            "partner": cfg.partner.model,
            "data": cfg.data.path,
            "train_split": cfg.data.split,
            "train_limit": cfg.data.limit,
            "eval_split": cfg.ablate.eval_split,
            "eval_limit": cfg.ablate.eval_limit,
            "rounds": cfg.method.rounds,
            "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr,
        },
    }


def _ci(m: dict, scale: float = 1.0, digits: int = 3) -> str:
    if m.get("mean") is None:
        return "-"
    lo, hi = m["ci95"]
    f = f"{{:.{digits}f}}"
    mean = f.format(scale * m["mean"])
    if lo is None:
        return mean
    return f"{mean} [{f.format(scale * lo)}, {f.format(scale * hi)}]"


def _p(p: dict) -> str:
    parts = []
    for m, v in p.items():
        if m == "accuracy":
            parts.append(f"acc {v['mcnemar_p']:.2g}")
        else:
            parts.append(f"{m} {v['t_p']:.2g}/{v['wilcoxon_p']:.2g}")
    return ", ".join(parts)


def table_markdown(res: dict) -> str:
    ms = res["metrics"]
    heads = {
        "accuracy": "accuracy % [95% CI]",
        "nll": "nll ↓ [95% CI]",
        "rouge": "ROUGE-L ↑ [95% CI]",
    }
    cols = ["system", *[heads[m] for m in ms], "p vs sft", "p saie vs single stance"]
    cols += ["updates", "target tokens", "train time"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        cells = [r["system"]]
        for m in ms:
            cells.append(
                _ci(r["metrics"][m], 100.0, 1) if m == "accuracy" else _ci(r["metrics"][m])
            )
        cells.append(_p(r["p"]["vs sft"]) if "vs sft" in r["p"] else "-")
        single = [
            f"vs {k[3:].replace('saie-', '')}: {_p(v)}" for k, v in r["p"].items() if k != "vs sft"
        ]
        cells.append("; ".join(single) or "-")
        cells += [str(r["updates"]), str(r["target_tokens"]), f"{r['train_seconds']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    s = res["settings"]
    lines += [
        "",
        f"n = {res['n_eval']} held-out items ({s['data']}, split {s['eval_split']}); "
        f"learner {s['learner']}, partner {s['partner']}; training on {s['train_limit'] or 'all'} "
        f"examples of split {s['train_split']}, {s['rounds']} round(s).",
        "p-values are paired over the same items: exact McNemar for accuracy; paired t-test / "
        "Wilcoxon signed-rank for nll and ROUGE-L. Intervals: Wilson (accuracy), Student t "
        "(nll, ROUGE-L).",
    ]
    remark_rows = [r for r in res["rows"] if r["remarks"]]
    if remark_rows:
        from saie_lite.remarks import rates_line

        lines += ["", "Partner remarks (diagnostics):", ""]
        lines += [f"- {r['system']}: {rates_line(r['remarks'])}" for r in remark_rows]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """Each metric per system with its 95% interval, and the training loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = res["metrics"]
    fig, axes = plt.subplots(1, len(ms) + 1, figsize=(4.2 * (len(ms) + 1), 3.8))
    names = [r["system"] for r in res["rows"]]
    for ax, m in zip(axes, ms):
        means, los, his = [], [], []
        for r in res["rows"]:
            v = r["metrics"][m]
            mean = v["mean"] if v["mean"] is not None else float("nan")
            lo, hi = v["ci95"]
            means.append(mean)
            los.append(max(0.0, mean - lo) if lo is not None else 0.0)
            his.append(max(0.0, hi - mean) if hi is not None else 0.0)
        ax.errorbar(range(len(names)), means, yerr=[los, his], fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(
            {"accuracy": "accuracy", "nll": "NLL / token (lower better)"}.get(m, "ROUGE-L F1")
        )
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for r in res["rows"]:
        if r["loss"]:
            ax.plot([x for x, _ in r["loss"]], [y for _, y in r["loss"]], label=r["system"])
    ax.set_title("training loss")
    ax.set_xlabel("update")
    if any(r["loss"] for r in res["rows"]):
        ax.legend(fontsize=8)
    fig.suptitle(f"saie-lite ablation, n={res['n_eval']} held-out items (95% intervals)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(res: dict, out: Path) -> None:
    atomic_write_text(out / "results.json", json.dumps(res, indent=2))
    atomic_write_text(out / "table.md", table_markdown(res))
    plot(res, out / "ablation.png")
