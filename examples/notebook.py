"""The Python API end to end, as a notebook would use it (each block is a cell).

Runs anywhere in under a minute: scripted models stand in for the learner and the
partner (what ``--dry-run`` uses), so nothing is downloaded and no GPU is needed. Drop
``dry_run=True`` and the ``scripted`` backends to train and evaluate for real.

    python examples/notebook.py [WORK_DIR]
"""

import sys
import tempfile
from pathlib import Path

import saie_lite

work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="saie-notebook-"))

# A config is checked as the CLI checks it: a bad key raises UserError with its line.
try:
    saie_lite.configure(train={"lrr": 1e-4})
except saie_lite.UserError as e:
    print(f"refused: {e}")

# Train: a dry run on 8 bundled GSM8K rows, progress to a callback of our own.
losses = []


def on_event(event: dict) -> None:
    if event["event"] == "step":
        losses.append(round(event["row"]["loss"], 3))


run = saie_lite.run_train(
    run_dir=work / "run",
    dry_run=True,
    data={"limit": 8, "split": "nodev"},
    train={"batch_size": 2},
    callback=on_event,
)
print(f"trained: {run['status']}, {run['step']} updates, losses {losses}")

# Evaluate it: the run's own data settings (here its held-out dev rows), plain lines.
summary = saie_lite.run_eval(run=run["run_dir"], out=work / "eval", data={"limit": 4})
acc = summary["metrics"]["accuracy"]
print(f"evaluated: n={summary['n']}, accuracy {acc['mean']:.2f} {acc['ci95']}")

# A tiny ablation: base and sft rows, scripted models, progress printed as plain lines.
res = saie_lite.run_ablate(
    out=work / "ablation",
    learner={"backend": "scripted"},
    partner={"backend": "scripted"},
    data={"limit": 6},
    train={"batch_size": 2},
    ablate={"systems": "sft", "eval_limit": 3},
    callback=saie_lite.print_event,
)
print("rows:", [r["system"] for r in res["rows"]])
print((work / "ablation" / "table.md").read_text())
