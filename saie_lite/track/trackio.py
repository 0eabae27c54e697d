"""Trackio (Hugging Face's local-first tracker), kept local: every run goes to one store,
TRACKIO_DIR, else $SAIE_LITE_HOME/trackio (one SQLite file per project, ``saie-lite.db``),
so ``TRACKIO_DIR=... trackio show --project saie-lite`` shows them side by side. Its
dashboard is never launched and nothing is sent: a Space or server named in the
environment is ignored, and the Hub's whoami it asks at every start is refused.

Trackio keeps one global current run: each run here is finished before the next starts
(an ablation's systems come one after the other), and its start finishes a run left open
by a tracker dropped mid-run."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from pathlib import Path

from saie_lite.track.base import RunInfo

PROJECT = "saie-lite"
# where trackio would send a run instead of its local store
REMOTE_ENV = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID")
_said: set[str] = set()  # notes said once per process, not once per ablation system


def before_import() -> None:
    """Point trackio's store at ours: it reads TRACKIO_DIR once, when first imported."""
    from saie_lite.paths import home

    os.environ.setdefault("TRACKIO_DIR", str(home() / "trackio"))


def _once(note, line: str) -> None:
    if line not in _said:
        _said.add(line)
        note(line)


@contextlib.contextmanager
def _local_and_quiet():
    """trackio's start and finish print to stdout (where our live view draws), may be
    sent elsewhere by the environment, and ask the Hub who is logged in when a token is
    saved; all three are held off for the call."""
    import huggingface_hub.constants as hub

    hidden = {k: os.environ.pop(k) for k in REMOTE_ENV if k in os.environ}
    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True  # read at every request: the whoami fails at once, offline
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        hub.HF_HUB_OFFLINE = offline
        os.environ.update(hidden)


class TrackioTracker:
    name = "trackio"

    def start(self, info: RunInfo, note) -> None:
        before_import()
        import trackio
        from trackio import context_vars, utils

        for k in REMOTE_ENV:
            if os.environ.get(k):
                _once(note, f"trackio: {k} is ignored: saie-lite keeps trackio's runs local")
        with _local_and_quiet():
            left_open = context_vars.current_run.get()
            if left_open is not None:  # a tracker dropped mid-run never finished its run
                trackio.finish()
            wanted = {
                "project": PROJECT,
                "name": info.name,
                "group": info.group or None,
                "config": info.config,
                "embed": False,  # never the dashboard, not even in a notebook
                "auto_log_gpu": False,  # no system-metric threads: the run's figures only
                "auto_log_cpu": False,
            }
            accepts = inspect.signature(trackio.init).parameters
            self.run = trackio.init(**{k: v for k, v in wanted.items() if k in accepts})
        # trackio writes from its own thread and turns a failure into a Python warning;
        # kept here instead, it is raised at the next call, so the fan-out says it in one
        # line and drops this tracker
        self.failures: list[str] = []
        if hasattr(self.run, "_warn_once"):
            self.run._warn_once = lambda key, message: self.failures.append(message)
        self.step = 0
        where = Path(utils.TRACKIO_DIR)  # fixed at import: TRACKIO_DIR as it was then
        _once(
            note,
            f"trackio: runs in {where}; see them with: "
            f"TRACKIO_DIR={where} trackio show --project {PROJECT}",
        )

    def _check(self) -> None:
        if self.failures:
            raise RuntimeError(self.failures[0])

    def log(self, values: dict[str, float], step: int) -> None:
        self._check()
        self.step = max(self.step, step)
        self.run.log(dict(values), step=step)

    def summary(self, values: dict[str, float]) -> None:
        # trackio keeps no separate summary: the closing figures are logged at the last step
        self.log(values, self.step)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import trackio

        self._check()
        table = trackio.Table(columns=columns, data=[[str(c) for c in r] for r in rows])
        self.run.log({key: table}, step=self.step)

    def finish(self, status: str) -> None:
        import trackio
        from trackio import context_vars

        with _local_and_quiet():
            if context_vars.current_run.get() is self.run:
                trackio.finish()  # clears the global current run too
            else:
                self.run.finish()
        self._check()  # a last write that failed while it flushed
