"""``saie-lite ablate``: the paper's comparison rows in one command (issue 14).

From one recipe: train ``sft``, ``saie-support``, ``saie-adversarial`` and ``saie`` on
the same examples with the same number of updates (the loop makes every batch one update
in every mode), evaluate the base learner and each run on the same held-out items with
every metric, and write ``table.md``, ``results.json`` and ``ablation.png``.

Every system is evaluated with each of ``ablate.strategies`` (single answer,
self-discussion, debate with the run's partner, self-consistency at the self-discussion
budget), and every trained system is trained with ``ablate.seeds`` seeds.

Everything lives in one experiment directory: ``runs/<system>/`` (ordinary run
directories; seed i > 0 in ``runs/<system>-seed<i>/``) and ``evals/<system>/``
(ordinary eval directories, strategy single; other strategies in
``evals/<strategy>/<system>/``). Running the command
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
# Rows that are not a training mode of their own: a mode plus config keys.
SYSTEM_OVERRIDES = {"saie-critique": {"method.mode": "saie", "method.critique_target": True}}


def run_name(system: str, seed: int) -> str:
    """A row's run directory name: seed 0 keeps the plain name (older experiments)."""
    return system if seed == 0 else f"{system}-seed{seed}"


def seeds_of(cfg: Config, system: str) -> list[int]:
    """The base learner is not trained: no seed changes it, so it is evaluated once."""
    return [0] if system == "base" else list(range(cfg.ablate.seeds))


def eval_dir(out: Path, system: str, seed: int, strategy: str) -> Path:
    base = out / "evals" if strategy == "single" else out / "evals" / strategy
    return base / run_name(system, seed)


def partner_spec(cfg: Config) -> str:
    """The run's partner as a debate agent (``eval.agents``' BACKEND:MODEL); partner
    ``self`` is the learner's own frozen weights, so the untrained learner."""
    if cfg.partner.backend == "self":
        return f"{cfg.learner.backend}:{cfg.learner.model}"
    return f"{cfg.partner.backend}:{cfg.partner.model}"


def strategy_config(ecfg: Config, strategy: str) -> tuple[Config, list[str]]:
    """The evaluation config and agent specs of one strategy. Self-consistency samples
    1 + eval.rounds answers per item: as many answers as self-discussion generates (and
    as the learner generates in a debate), each at most eval.max_new_tokens, so the
    comparison is at the same generated-token budget."""
    c = copy.deepcopy(ecfg)
    c.eval.strategy = strategy
    if strategy == "self-consistency":
        c.eval.k = 1 + c.eval.rounds
    specs = ["learner", partner_spec(ecfg)] if strategy == "debate" else ["learner"]
    return c, specs


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


def train_system(
    cfg: Config, system: str, out: Path, examples, view, stop, seed: int = 0
) -> dict | None:
    """Train one row with seed index ``seed`` (train.seed + seed: data order, LoRA
    initialisation and sampling), or reuse it; None when stopped."""
    from saie_lite.store import Store
    from saie_lite.train.checkpoint import latest
    from saie_lite.train.loop import train
    from saie_lite.train.runs import build_backends

    name = run_name(system, seed)
    run_dir = out / "runs" / name
    done = run_dir / "finished.json"
    if done.is_file():
        return json.loads(done.read_text())
    c = copy.deepcopy(cfg)
    c.method.mode, c.run.dir = system, str(run_dir)
    for key, value in SYSTEM_OVERRIDES.get(system, {}).items():
        section, attr = key.split(".")
        setattr(getattr(c, section), attr, value)
    c.train.seed = cfg.train.seed + seed
    system = name  # what the progress and notes call it
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


def eval_system(
    ecfg: Config,
    system: str,
    out: Path,
    examples,
    view,
    stop,
    seed: int = 0,
    strategy: str = "single",
) -> dict | None:
    """Evaluate one row (one seed, one strategy) or reuse its finished summary; None
    when stopped."""
    from saie_lite.evaluate.agents import build_agents
    from saie_lite.evaluate.evaluation import evaluate
    from saie_lite.store import Store
    from saie_lite.tasks import get_task

    name = run_name(system, seed)
    ecfg, specs = strategy_config(ecfg, strategy)
    folder = eval_dir(out, system, seed, strategy)
    path = folder / "summary.json"
    if path.is_file():
        s = json.loads(path.read_text())
        if s.get("status") == "finished" and s.get("n") == len(examples):
            return s
    run_dir = None if system == "base" else out / "runs" / name
    agents = build_agents(ecfg, specs, run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    what = name if strategy == "single" else f"{name} {strategy}"
    system = name  # the evaluation's name in its store, as before seeds

    def on_batch(done: int, total: int, rows: list) -> None:
        if rows:
            view.advance(len(rows), f"eval {what} {done}/{total}")

    from saie_lite.locks import hold

    with hold(folder, "evaluation", lambda line: view.note(f"{system}: {line}")):
        store = Store(folder / "saie.sqlite")
        try:
            summary = evaluate(
                ecfg, get_task(ecfg.data), examples, agents, store, system, folder, on_batch, stop
            )
        finally:
            store.close()
            del agents
            gc.collect()
    return summary if summary["status"] == "finished" else None


def units_done(out: Path, cfg: Config, systems: list[str], strategies: list[str]) -> int:
    """Work already finished in the experiment directory (for the progress bar)."""
    from saie_lite.store import Store

    dbs = [
        (out / "runs" / run_name(s, i) / "saie.sqlite", "SELECT COUNT(*) FROM steps")
        for s in systems
        for i in seeds_of(cfg, s)
        if s != "base"
    ]
    dbs += [
        (eval_dir(out, s, i, st) / "saie.sqlite", "SELECT COUNT(*) FROM eval_items")
        for st in strategies
        for s in systems
        for i in seeds_of(cfg, s)
    ]
    done = 0
    for db, sql in dbs:
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
    strategies, n_seeds = cfg.ablate.strategy_list, cfg.ablate.seeds
    # Every unit in the order it runs, by kind, for the progress bar's ETA.
    kinds = [
        "plain" if s == "sft" or b.phase == "warmup" else "discussion"
        for _ in range(n_seeds)
        for s in trained
        for b in batches
    ]
    kinds += [
        "eval" if st == "single" else "eval-discussion"
        for st in strategies
        for s in systems
        for _ in seeds_of(cfg, s)
        for _ in eval_examples
    ]
    view.start(kinds, units_done(out, cfg, systems, strategies))
    seeds_line = f", {n_seeds} seeds each" if n_seeds > 1 else ""
    view.note(
        f"{len(systems)} systems ({', '.join(systems)}): {len(examples)} training examples, "
        f"{n_updates} updates each{seeds_line}; {len(eval_examples)} held-out items "
        f"({ecfg.data.split}) under {', '.join(strategies)}"
    )
    t0 = time.perf_counter()
    runs: dict[tuple[str, int], dict] = {}
    evals: dict[str, dict[tuple[str, int], dict]] = {st: {} for st in strategies}
    status = "finished"
    # Seed 0 of every system first: a stopped experiment has a whole comparison soonest.
    for i in range(n_seeds):
        for s in trained:
            facts = train_system(cfg, s, out, examples, view, stop, i)
            if facts is None:
                status = "stopped"
                break
            runs[(s, i)] = facts
        if status != "finished":
            break
    if status == "finished":
        for st in strategies:
            for s in systems:
                for i in seeds_of(cfg, s):
                    summary = eval_system(ecfg, s, out, eval_examples, view, stop, i, st)
                    if summary is None:
                        status = "stopped"
                        break
                    evals[st][(s, i)] = summary
                if status != "finished":
                    break
            if status != "finished":
                break
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


def _item_values(summary: dict, m: str) -> dict[str, float]:
    """One metric per item id: accuracy as 0/1 (strict), the others as stored."""
    out = {}
    for i in summary["items"]:
        v = float(i["strict_correct"]) if m == "accuracy" else (i.get("metrics") or {}).get(m)
        if v is not None:
            out[i["id"]] = v
    return out


def _seed_averaged(summaries: list[dict], m: str) -> dict[str, float]:
    """Each item's metric averaged over a system's seeds (items every seed holds)."""
    per = [_item_values(x, m) for x in summaries]
    ids = set(per[0]).intersection(*per[1:])
    return {i: sum(p[i] for p in per) / len(per) for i in ids}


def _seed_metric(summaries: list[dict], m: str) -> dict:
    """A metric over seeds: the mean of the per-seed means with their spread, and a 95%
    Student-t interval over the items' seed-averaged values."""
    from saie_lite.evaluate.metrics import RANGE, mean_ci
    from saie_lite.evaluate.stats import spread

    means = [x["metrics"][m]["mean"] for x in summaries if x["metrics"][m]["mean"] is not None]
    per_item = list(_seed_averaged(summaries, m).values())
    ci = mean_ci(per_item, bounds=RANGE.get(m, (0.0, 1.0)))
    return {**spread(means), "n": ci["n"], "ci95": ci["ci95"]}


def _pvals_seeds(a: list[dict], b: list[dict], metrics: list[str]) -> dict:
    """B against A with seeds: paired over items on the seed-averaged values (t-test and
    Wilcoxon, the item-level variance) beside a test over the per-seed means (Welch, or
    one-sample against a side with one run: the seed-level variance)."""
    from saie_lite.evaluate.metrics import RANGE
    from saie_lite.evaluate.stats import over_seeds, paired_continuous

    out = {}
    for m in metrics:
        va, vb = _seed_averaged(a, m), _seed_averaged(b, m)
        ids = sorted(set(va) & set(vb))
        if not ids:
            continue
        p = paired_continuous([va[i] for i in ids], [vb[i] for i in ids], RANGE.get(m, (0, 1)))
        seeds = over_seeds(
            [x["metrics"][m]["mean"] for x in a], [x["metrics"][m]["mean"] for x in b]
        )
        out[m] = {
            "t_p": p["t_p"],
            "wilcoxon_p": p["wilcoxon_p"],
            "diff": p["diff"],
            "diff_ci": p["diff_ci"],
            "seeds_test": seeds["test"],
            "seeds_p": seeds["p"],
        }
    return out


def _facts(cfg: Config, runs: dict, system: str) -> dict:
    """A row's training figures over its seeds: updates (the same for every seed), mean
    target tokens, total train time; the loss curve and remarks of seed 0."""
    got = [runs[(system, i)] for i in seeds_of(cfg, system) if (system, i) in runs]
    if not got:
        return {"updates": 0, "target_tokens": 0, "seconds": 0.0, "loss": [], "remarks": {}}
    return {
        "updates": got[0]["updates"],
        "target_tokens": round(sum(r["target_tokens"] for r in got) / len(got)),
        "seconds": sum(r["seconds"] for r in got),
        "loss": got[0]["loss"],
        "remarks": got[0].get("remarks") or {},
    }


def strategy_rows(systems, runs, evals: dict, cfg: Config, metrics: list[str]) -> list[dict]:
    """One strategy's rows; ``evals`` maps (system, seed) to that strategy's summary."""
    multi = cfg.ablate.seeds > 1
    by = {s: [evals[(s, i)] for i in seeds_of(cfg, s)] for s in systems}
    rows = []
    for s in systems:
        r = _facts(cfg, runs, s)
        if multi:
            ms = {m: _seed_metric(by[s], m) for m in metrics}
        else:
            ms = {m: by[s][0]["metrics"][m] for m in metrics}
        row = {
            "system": s,
            "metrics": ms,
            "updates": r["updates"],
            "target_tokens": r["target_tokens"],
            "train_seconds": r["seconds"],
            "eval_seconds": sum(x["seconds"] for x in by[s]),
            "loss": r["loss"],
            "remarks": r["remarks"],
            "seeds": len(by[s]),
            "p": {},
        }

        def versus(other: str, s: str = s) -> dict:
            if multi:
                return _pvals_seeds(by[other], by[s], metrics)
            return _pvals(by[other][0], by[s][0])

        if s != "sft" and "sft" in by:
            row["p"]["vs sft"] = versus("sft")
        if s == "saie":
            for single in ("saie-support", "saie-adversarial"):
                if single in by:
                    row["p"][f"vs {single}"] = versus(single)
        rows.append(row)
    return rows


def assemble(systems, runs, evals, cfg: Config, seconds: float) -> dict:
    """``evals``: strategy -> (system, seed) -> summary. The first strategy (single when
    asked for) fills the top-level ``rows`` as before strategies existed; the others go
    under ``strategies``."""
    order = list(evals)
    top = "single" if "single" in order else order[0]
    first = evals[top][(systems[0], 0)]
    metrics = [m for m in ("accuracy", "nll", "rouge") if m in first["metrics"]]
    blocks = {st: strategy_rows(systems, runs, evals[st], cfg, metrics) for st in order}
    return {
        "status": "finished",
        "n_eval": first["n"],
        "metrics": metrics,
        "strategy": top,
        "rows": blocks[top],
        "strategies": {st: {"rows": rows} for st, rows in blocks.items() if st != top},
        "strategy_order": order,
        "seeds": cfg.ablate.seeds,
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
            "strategies": ",".join(order),
            "eval_rounds": cfg.eval.rounds,
            "self_consistency_k": 1 + cfg.eval.rounds,
            "debate_partner": partner_spec(cfg),
            "seeds": cfg.ablate.seeds,
            "train_seed": cfg.train.seed,
        },
    }


def blocks(res: dict) -> list[tuple[str, list[dict]]]:
    """(strategy, rows) in the order they ran; a results.json from before strategies
    has only its top-level rows, answered with strategy single."""
    top = res.get("strategy", "single")
    others = res.get("strategies") or {}
    order = res.get("strategy_order") or [top, *others]
    return [(st, res["rows"] if st == top else others[st]["rows"]) for st in order]


def _ci(m: dict, scale: float = 1.0, digits: int = 3) -> str:
    if m.get("mean") is None:
        return "-"
    f = f"{{:.{digits}f}}"
    mean = f.format(scale * m["mean"])
    if "seeds" in m:  # over seeds: the mean of the seeds' means and their spread
        if m["sd"] is None:
            return f"{mean} (1 run)"
        return (
            f"{mean} ± {f.format(scale * m['sd'])} "
            f"({f.format(scale * m['min'])}–{f.format(scale * m['max'])})"
        )
    lo, hi = m["ci95"]
    if lo is None:
        return mean
    return f"{mean} [{f.format(scale * lo)}, {f.format(scale * hi)}]"


def _p(p: dict) -> str:
    parts = []
    for m, v in p.items():
        name = "acc" if m == "accuracy" else m
        if "mcnemar_p" in v:
            parts.append(f"acc {v['mcnemar_p']:.2g}")
        else:
            parts.append(f"{name} {v['t_p']:.2g}/{v['wilcoxon_p']:.2g}")
        if v.get("seeds_p") is not None:
            parts[-1] += f" seeds {v['seeds_p']:.2g}"
    return ", ".join(parts)


def _table(res: dict, rows: list[dict]) -> list[str]:
    ms = res["metrics"]
    if res.get("seeds", 1) > 1:
        n = res["seeds"]
        heads = {
            "accuracy": f"accuracy % (mean ± sd over {n} seeds, min–max)",
            "nll": "nll ↓ (mean ± sd, min–max)",
            "rouge": "ROUGE-L ↑ (mean ± sd, min–max)",
        }
    else:
        heads = {
            "accuracy": "accuracy % [95% CI]",
            "nll": "nll ↓ [95% CI]",
            "rouge": "ROUGE-L ↑ [95% CI]",
        }
    cols = ["system", *[heads[m] for m in ms], "p vs sft", "p saie vs single stance"]
    cols += ["updates", "target tokens", "train time"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
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
    return lines


STRATEGY_LINES = {
    "single": "one answer per item",
    "self-consistency": "majority vote of {k} sampled answers (the self-discussion budget)",
    "self-discussion": "the system revises its own answer for {r} round(s)",
    "debate": "the system and the partner ({partner}) answer and revise for {r} round(s); "
    "the last round is put to a vote",
}


def table_markdown(res: dict) -> str:
    s = res["settings"]
    strategies = blocks(res)
    lines: list[str] = []
    for name, rows in strategies:
        if len(strategies) > 1 or name != "single":
            how = STRATEGY_LINES[name].format(
                k=s.get("self_consistency_k"),
                r=s.get("eval_rounds"),
                partner=s.get("debate_partner"),
            )
            lines += [f"### {name}: {how}", ""]
        lines += [*_table(res, rows), ""]
    lines += [
        f"n = {res['n_eval']} held-out items ({s['data']}, split {s['eval_split']}); "
        f"learner {s['learner']}, partner {s['partner']}; training on {s['train_limit'] or 'all'} "
        f"examples of split {s['train_split']}, {s['rounds']} round(s).",
    ]
    if res.get("seeds", 1) > 1:
        lines += [
            f"Each trained system was trained with {res['seeds']} seeds (train.seed "
            f"{s['train_seed']}, {s['train_seed']} + 1, ...: data order, LoRA initialisation, "
            "sampling); the base learner is one run. p-values: paired t-test / Wilcoxon "
            "signed-rank over the same items on each item's seed-averaged score (correctness "
            "for accuracy), then 'seeds': Welch's t-test on the per-seed means (one-sample "
            "against the base's one run).",
        ]
    else:
        lines += [
            "p-values are paired over the same items: exact McNemar for accuracy; paired "
            "t-test / Wilcoxon signed-rank for nll and ROUGE-L. Intervals: Wilson (accuracy), "
            "Student t (nll, ROUGE-L).",
        ]
    remark_rows = [r for r in res["rows"] if r["remarks"]]
    if remark_rows:
        from saie_lite.remarks import rates_line

        lines += ["", "Partner remarks (diagnostics):", ""]
        lines += [f"- {r['system']}: {rates_line(r['remarks'])}" for r in remark_rows]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """One line of panels per strategy: each metric per system with its 95% interval
    (seeds: each seed's mean as a dot); the training loss curves beside the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = res["metrics"]
    strategies = blocks(res)
    fig, grid = plt.subplots(
        len(strategies),
        len(ms) + 1,
        figsize=(4.2 * (len(ms) + 1), 3.8 * len(strategies)),
        squeeze=False,
    )
    for axes, (name, rows) in zip(grid, strategies):
        names = [r["system"] for r in rows]
        for ax, m in zip(axes, ms):
            means, los, his = [], [], []
            for x, r in enumerate(rows):
                v = r["metrics"][m]
                mean = v["mean"] if v["mean"] is not None else float("nan")
                lo, hi = v["ci95"]
                means.append(mean)
                los.append(max(0.0, mean - lo) if lo is not None else 0.0)
                his.append(max(0.0, hi - mean) if hi is not None else 0.0)
                if len(v.get("seeds") or []) > 1:
                    ax.plot([x + 0.15] * len(v["seeds"]), v["seeds"], ".", color="grey")
            ax.errorbar(range(len(names)), means, yerr=[los, his], fmt="o", capsize=4)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            title = {"accuracy": "accuracy", "nll": "NLL / token (lower better)"}.get(
                m, "ROUGE-L F1"
            )
            ax.set_title(f"{name}: {title}")
            ax.grid(alpha=0.3)
        axes[-1].set_visible(False)
    ax = grid[0][-1]
    ax.set_visible(True)
    for r in res["rows"]:
        if r["loss"]:
            ax.plot([x for x, _ in r["loss"]], [y for _, y in r["loss"]], label=r["system"])
    ax.set_title("training loss" + (" (seed 0)" if res.get("seeds", 1) > 1 else ""))
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
