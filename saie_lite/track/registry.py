"""Trackers by name (``train.report_to``), each in its own module, imported only when
asked for; a missing library is one line naming the extra that brings it."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from saie_lite.config import TRACKERS
from saie_lite.errors import UserError
from saie_lite.safe_text import one_line
from saie_lite.track.base import RunInfo, Trackers

# name -> (the package its module needs, the class in saie_lite.track.<name>)
MODULES = {
    "tensorboard": ("tensorboard", "TensorBoardTracker"),
    "wandb": ("wandb", "WandbTracker"),
    "mlflow": ("mlflow", "MlflowTracker"),
    "trackio": ("trackio", "TrackioTracker"),
}
assert set(MODULES) == set(TRACKERS)

REPORT_TO_HELP = f"also log to these trackers, comma list: {' | '.join(TRACKERS)} | none"


def names(report_to: str) -> list[str]:
    """``"tensorboard,wandb"`` -> ``["tensorboard", "wandb"]``; ``none`` -> ``[]`` (the
    config's check has already refused unknown names)."""
    return [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]


def require(report_to: str) -> None:
    """Every tracker asked for can be imported: checked before anything is written, so a
    missing library stops the command at once, not after hours of training untracked."""
    for name in names(report_to):
        package = MODULES[name][0]
        # a library that reads where to write once, at import (trackio), is told first
        before = getattr(importlib.import_module(f"saie_lite.track.{name}"), "before_import", None)
        if before is not None:
            before()
        try:
            importlib.import_module(package)
        except ImportError as e:
            raise UserError(
                f"--report-to {name} needs the {package} package ({_why(e, package)}): "
                f"pip install 'saie-lite[{name}]'"
            ) from None


def _why(e: ImportError, package: str) -> str:
    """'not installed', or what broke inside an installed one (a dependency too old)."""
    return "not installed" if e.name == package else one_line(str(e))


def open_trackers(report_to: str, info: RunInfo, note: Callable[[str], None]) -> Trackers:
    """The asked-for trackers, each started on ``info``; one that cannot start is said in
    one line and left out."""
    out = Trackers(note)
    for name in names(report_to):
        package, cls = MODULES[name]
        try:
            module = importlib.import_module(f"saie_lite.track.{name}")
        except ImportError:  # require() ran before: only a broken install gets here
            note(f"tracking: {name} cannot be imported: pip install 'saie-lite[{name}]'")
            continue
        out.start(getattr(module, cls)(), info)
    return out
