"""Build the models that answer at inference time (evaluation and debate).

An agent spec is ``learner`` (the configured learner, with a run's adapter if given),
``run:RUN_DIR`` (that run's learner and latest adapter), or ``BACKEND:MODEL`` for any
registered learner or partner backend (``llama_cpp:embedded``, ``torch:embedded``,
``llama_cpp:/models/x.gguf``). Equal specs share one loaded model.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.paths import EMBEDDED
from saie_lite.protocols import CountsGenerated, LoadsAdapter, supports


def asked_precision(cfg: Config) -> dict[str, str]:
    """The learner's ``dtype`` and ``quantize`` where they are not left at auto: what an
    evaluation records and names, and what wins over a run's own settings."""
    return {
        k: getattr(cfg.learner, k)
        for k in ("dtype", "quantize")
        if getattr(cfg.learner, k) != "auto"
    }


def load_learner(cfg: Config, run_dir: Path | None = None):
    """The configured learner; with ``run_dir``, that run's learner and latest adapter."""
    from saie_lite.registry import factory
    from saie_lite.train.checkpoint import usable
    from saie_lite.train.runs import saved_config

    if run_dir is not None:
        saved = saved_config(run_dir)
        # precision asked for on the command line wins over the run's (evaluating a
        # float32 run in bf16); all else is the run's
        asked = {f"learner.{k}": v for k, v in asked_precision(cfg).items()}
        cfg = copy.deepcopy(cfg)
        from saie_lite.config import apply

        apply(cfg, {"learner": saved.get("learner", {}), "train": saved.get("train", {})})
        apply(cfg, asked)
        ckpt = usable(run_dir, note=lambda m: print(f"note: {m}", file=sys.stderr))
        if ckpt is None:
            raise UserError(f"{run_dir} has no checkpoint yet: train it first")
    if cfg.learner.backend == "auto":  # after the run's own settings, which may say auto
        from saie_lite.registry import choose_learner

        cfg = copy.deepcopy(cfg)
        cfg.learner.backend = choose_learner("auto")[0]
    learner = factory("learners", cfg.learner.backend)(cfg)
    if run_dir is not None:
        # The adapter alone where the backend can (no optimizer state to read), else the
        # whole checkpoint ``save`` wrote.
        (learner.load_adapter if supports(learner, LoadsAdapter) else learner.load)(ckpt)
        # The checkpoint is part of the name, which an evaluation's settings record: an
        # evaluation is never resumed, nor a debate logged, under a newer adapter.
        learner.name = f"{learner.name}+{Path(run_dir).name}@{ckpt.name}"
    return learner


def build_agents(cfg: Config, specs: list[str], run_dir: Path | None = None) -> list:
    from saie_lite.registry import available, factory

    loaded: dict[str, object] = {}
    agents = []
    for spec in specs:
        spec = spec.strip()
        if spec not in loaded:
            if spec == "learner":
                loaded[spec] = load_learner(cfg, run_dir)
            elif spec.startswith("run:"):
                loaded[spec] = load_learner(cfg, Path(spec[4:]))
            elif ":" in spec:
                backend, model = spec.split(":", 1)
                c = copy.deepcopy(cfg)
                if backend in available("partners") and backend not in available("learners"):
                    c.partner.backend, c.partner.model = backend, model
                    if backend == "openai" and (not model or model.startswith(EMBEDDED)):
                        # 'openai:' names no model: the one the server serves (train does
                        # the same for a partner left at its default)
                        from saie_lite.backends.openai_http import served_model

                        c.partner.model = served_model(
                            c.partner, lambda m: print(f"note: {m}", file=sys.stderr)
                        )
                    loaded[spec] = factory("partners", backend)(c)
                else:
                    c.learner.backend, c.learner.model = backend, model
                    loaded[spec] = factory("learners", backend)(c)
            else:
                raise UserError(
                    f"agent spec {spec!r} not understood: use learner, run:RUN_DIR or BACKEND:MODEL"
                )
        agents.append(loaded[spec])
    return agents


def tokens_generated(agents: list) -> int:
    unique = {id(a): a for a in agents}.values()
    return sum(a.tokens_generated for a in unique if supports(a, CountsGenerated))
