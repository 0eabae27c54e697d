"""MLflow, through its client (no global active run). MLFLOW_TRACKING_URI says where;
without it every run goes to one local store, $SAIE_LITE_HOME/mlflow.db, so that
``mlflow ui --backend-store-uri sqlite:///$SAIE_LITE_HOME/mlflow.db`` shows them side
by side. The experiment is MLFLOW_EXPERIMENT_NAME, else ``saie-lite``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from saie_lite.track.base import RunInfo

BATCH = 100  # the most params MLflow takes in one log_batch
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def default_uri() -> str:
    from saie_lite.paths import home

    return f"sqlite:///{home() / 'mlflow.db'}"


def artifacts_beside(uri: str) -> str | None:
    """A local database's artifacts in a folder beside it: MLflow's default for one is
    ./mlruns of wherever the command ran. A server (http...) keeps its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).parent / "mlflow-artifacts").as_uri()


class MlflowTracker:
    name = "mlflow"

    def start(self, info: RunInfo, note) -> None:
        # its database set-up lines (INFO) would land in our view
        for logger in ("mlflow", "alembic"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        from saie_lite import __version__

        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "saie-lite"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            exp_id = self.client.create_experiment(name, artifact_location=artifacts_beside(uri))
        tags = {"saie_lite.kind": info.kind, "saie_lite.folder": str(info.folder)}
        tags["saie_lite.version"] = __version__
        if info.group:
            tags["saie_lite.group"] = info.group
        self.run_id = self.client.create_run(exp_id, run_name=info.name, tags=tags).info.run_id
        self.step = 0
        params = [Param(k, str(v)[:6000]) for k, v in info.config.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self.step = max(self.step, step)
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def summary(self, values: dict[str, float]) -> None:
        self.log(values, self.step)  # MLflow's latest value of a metric is its summary

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        data = {c: [str(r[i]) for r in rows] for i, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{key}.json")

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FINISHED"))
