"""The Python API, for notebooks and scripts: the same door the CLI uses.

A config is built like the CLI builds it (recipe, then overrides, checked the same way: a
bad key raises the ``UserError`` whose line the CLI prints), and each run calls the same
core function as its command and returns the same summary dict. Progress goes to a plain
``callback(event: dict)`` (``saie_lite.ui.callback_view``), or, without one, to plain
printed lines: no Rich Live, which a Jupyter cell does not redraw.

The names are ``run_train``, ``run_eval`` and ``run_ablate``: ``saie_lite.train`` and
``saie_lite.evaluate`` are the packages that do the work, so plain ``train`` and
``evaluate`` would be shadowed by them once imported. See docs/python-api.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from saie_lite import config as config_mod
from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.ui.callback_view import print_event

Callback = Callable[[dict], None]


def _dotted(overrides: dict | None, sections: dict) -> dict[str, Any]:
    """Dotted keys from a dict (dotted or ``{section: {key: value}}``) and keyword
    sections (``data={"limit": 6}``). Anything else is left for ``config.apply`` to
    refuse with the line the CLI gives."""
    out: dict[str, Any] = {}
    for top, value in [*(overrides or {}).items(), *sections.items()]:
        if isinstance(value, dict) and isinstance(top, str) and "." not in top:
            out.update({f"{top}.{k}": v for k, v in value.items()})
        else:
            out[top] = value
    return out


def configure(recipe: str | Path | None = None, overrides: dict | None = None, **sections):
    """A checked ``Config``: defaults, then ``recipe`` (a YAML file), then ``overrides``
    (``{"train.lr": 1e-4}`` or ``{"train": {"lr": 1e-4}}``) and keyword sections
    (``data={"limit": 6}``) - what ``--recipe`` and ``--set`` do."""
    return config_mod.build(recipe, _dotted(overrides, sections))


def _config(cfg, sections: dict) -> Config:
    if isinstance(cfg, Config):
        if sections:
            raise UserError(
                "give a Config or keyword sections, not both: put them into configure(...)"
            )
        return cfg
    return configure(cfg, None, **sections)


def run_train(
    cfg: Config | str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    dry_run: bool = False,
    callback: Callback | None = None,
    **sections,
) -> dict:
    """``saie-lite train``: a new run (into ``run_dir``, or ``run.dir``, or a new folder
    under ``$SAIE_LITE_HOME/runs``), or ``resume`` a run with sections that may change on
    resume. Returns the run's summary (``status``, ``step``, ``run_dir``...)."""
    from saie_lite.train.runs import new_run_dir, saved_config, start_training
    from saie_lite.ui.train_view import make_view

    if resume is not None:
        if cfg is not None:
            raise UserError("resume takes the run's saved config: drop the config argument")
        cfg, _ = config_mod.resume_config(saved_config(Path(resume)), _dotted(None, sections))
        target = Path(resume)
    else:
        cfg = _config(cfg, sections)
        if run_dir is not None:
            cfg.run.dir = str(run_dir)
        target = new_run_dir(cfg)
    cfg.run.dir = str(target)
    if callback is not None:
        from saie_lite.ui.callback_view import TrainEvents

        view = TrainEvents(callback)
    else:
        view = make_view("quiet" if cfg.run.live == "quiet" else "plain")
    return start_training(cfg, target, resume is not None, dry_run, view)


def run_eval(
    cfg: Config | None = None,
    *,
    run: str | Path | None = None,
    out: str | Path | None = None,
    callback: Callback | None = None,
    **sections,
) -> dict:
    """``saie-lite eval``: the configured learner, or ``run``'s trained one. Without a
    ``Config``, the keyword sections are the flags, and a ``run`` reuses its own data
    settings (task, file, fields, check) unless they say otherwise. Returns the
    evaluation's summary (``n``, ``metrics`` with 95% intervals, ``status``)."""
    from saie_lite.evaluate.start import eval_config, start_eval
    from saie_lite.ui.eval_view import EvalView

    if callback is not None:
        from saie_lite.ui.callback_view import EvalEvents

        view = EvalEvents(callback)
    else:
        view = EvalView(rich=False)
    if not isinstance(cfg, Config):
        if cfg is not None:
            raise UserError("run_eval takes a Config, or keyword sections (data={...})")
        cfg = eval_config(_dotted(None, sections), run, view.note)
    elif sections:
        raise UserError("give a Config or keyword sections, not both: put them into configure")
    return start_eval(cfg, Path(run) if run else None, Path(out) if out else None, view)


def run_ablate(
    cfg: Config | str | Path | None = None,
    *,
    out: str | Path | None = None,
    callback: Callback | None = None,
    **sections,
) -> dict:
    """``saie-lite ablate``: train the mode rows, evaluate them and the base on held-out
    rows, write table.md, results.json and ablation.png into ``out`` (default
    ``ablate.dir``, else ``$SAIE_LITE_HOME/ablations/<recipe name>``). Returns the
    results (``rows``, ``metrics``, ``settings``), or ``{"status": "stopped"}``."""
    from saie_lite.evaluate.ablation import default_dir, run_ablation

    recipe = cfg if isinstance(cfg, (str, Path)) else None
    cfg = _config(cfg, sections)
    target = Path(out) if out else default_dir(cfg, Path(recipe) if recipe else None)
    if callback is not None:
        from saie_lite.ui.callback_view import AblateEvents

        view = AblateEvents(callback)
    else:
        from saie_lite.ui.ablate_view import PlainAblateView

        view = PlainAblateView()
    from saie_lite.train.runs import StopFlag

    # Ctrl-C (a notebook's interrupt) stops after the current step, as in the CLI
    with StopFlag(lambda again: view.note(f"stopping after this step ({again})")) as flag:
        return run_ablation(cfg, target, view, flag)


__all__ = ["Config", "UserError", "configure", "print_event", "run_ablate", "run_eval", "run_train"]
