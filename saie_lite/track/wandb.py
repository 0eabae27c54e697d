"""Weights & Biases. Without an API key (neither WANDB_API_KEY nor a `wandb login`) and
without WANDB_MODE, the run is written offline into FOLDER/wandb and said so, with the
command that uploads it later (``wandb sync``): no prompt, no network wait."""

from __future__ import annotations

import os
from pathlib import Path

from saie_lite.track.base import RunInfo


def _logged_in() -> bool:
    """A key in the environment, or one `wandb login` wrote to the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"

    def start(self, info: RunInfo, note) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "saie-lite",
            name=info.name,
            group=info.group or None,
            job_type=info.kind,
            dir=str(info.folder),
            config=info.config,
            mode=mode,
            # our own view owns the terminal: wandb neither captures nor prints to it
            settings=wandb.Settings(console="off", silent=True),
        )
        if mode in ("offline", "dryrun"):
            why = "WANDB_MODE" if os.environ.get("WANDB_MODE") else "no WANDB_API_KEY"
            where = Path(self.run.dir).parent  # the offline run's own folder
            note(f"wandb: offline ({why}); upload it later with: wandb sync {where}")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=[[str(c) for c in r] for r in rows])})

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "stopped") else 1)
