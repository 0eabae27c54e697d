"""TensorBoard: event files in FOLDER/tb, written with tensorboard's own writer (no torch
or TensorFlow needed). ``tensorboard --logdir FOLDER`` shows them; the hyper-parameters go
to the HParams tab, the config and tables to the Text tab."""

from __future__ import annotations

import time

from saie_lite.track.base import RunInfo


def _markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


class TensorBoardTracker:
    name = "tensorboard"

    def start(self, info: RunInfo, note) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir = info.folder / "tb"
        self.writer = EventFileWriter(str(logdir), flush_secs=10)
        self.step = 0
        from tensorboard.plugins.hparams import summary_v2 as hp

        self._write(hp.hparams_pb(info.config), 0)
        rows = [[k, f"`{v}`"] for k, v in info.config.items()]
        self.table("config", ["key", "value"], rows)

    def _write(self, summary, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def log(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.step = max(self.step, step)
        # plain scalar values: what TensorBoard and every reader of event files know
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self._write(summary, step)

    def summary(self, values: dict[str, float]) -> None:
        # TensorBoard keeps no separate summary: the closing figures are scalars at the
        # last step, under their own names
        self.log(values, self.step)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._write(text_pb(key, _markdown(columns, rows)), self.step)

    def finish(self, status: str) -> None:
        self.writer.close()  # flushes what is queued
