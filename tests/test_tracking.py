"""Trackers (``train.report_to``, ``--report-to``): what each one wrote is read back with
its own reader (TensorBoard's event accumulator, the records of wandb's offline run file,
MLflow's client, trackio's SQLite storage) and compared with the run's own store; a tracker that fails is one line
and the run goes on; a missing library is one line naming the extra."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.store import Store

pytest.importorskip("tensorboard")
runner = CliRunner()
SECRET = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """wandb offline (no network, no prompt), MLflow in this test's own store."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def dry_train(run: Path, report_to: str, *extra: str):
    args = ["train", "--dry-run", "--limit", "6", "--run-dir", str(run), "--live", "plain"]
    return runner.invoke(app, [*args, "--report-to", report_to, *extra])


def stored_steps(run: Path) -> list[dict]:
    store = Store(run / "saie.sqlite", reader=True)
    try:
        return store.steps()
    finally:
        store.close()


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(s.step, s.value) for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def tensorboard_text(logdir: Path, tag: str) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()


def wandb_records(run_file: Path) -> list:
    """The records of a wandb run file (``run-ID.wandb``): a 7-byte header (':W&B', magic,
    version), then 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle,
    4 last), each record one ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def wandb_run(folder: Path) -> dict:
    """History per key, the config and the last summary of the one offline run in
    FOLDER/wandb."""
    (run_file,) = (folder / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[str, list[tuple[int, float]]] = {}
    config, summary = {}, {}
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((items["_step"], v))
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
    return {"history": history, "config": config, "summary": summary}


def mlflow_runs(tmp_path: Path, **tags) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("saie-lite")
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client, client.search_runs([exp.experiment_id], filter_string=where)


def test_train_dry_run_reports_every_update_to_all_three(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    # a partner key in the environment: its variable's NAME is config, the key never is
    monkeypatch.setenv("SAIE_TEST_KEY", SECRET)
    run = tmp_path / "run"
    r = dry_train(run, "tensorboard,wandb,mlflow", "--set", "partner.api_key_env=SAIE_TEST_KEY")
    assert r.exit_code == 0, r.output
    steps = stored_steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    losses = [(s["step"], s["loss"]) for s in steps]

    tb = tensorboard_scalars(run / "tb")
    assert [(st, pytest.approx(v, rel=1e-6)) for st, v in tb["train/loss"]] == losses
    assert [v for _, v in tb["train/sequences"]] == [s["n_sequences"] for s in steps]
    assert [v for _, v in tb["train/target_tokens"]] == [s["n_target_tokens"] for s in steps]
    assert [v for _, v in tb["train/lr"]] == [pytest.approx(2e-4)] * 3
    for key in ("time/generate_s", "time/remark_s", "time/update_s", "speed/tokens_per_s"):
        assert len(tb[key]) == 3, key
    # the warm-up update has no remarks; both discussion updates have both stances'
    assert [st for st, _ in tb["remarks/adversarial/on_stance"][:2]] == [2, 3]
    assert tb["remarks/supportive/on_stance"][0][1] == 1.0  # the scripted partner keeps its stance
    assert tb["remarks/missing"][0] == (1, 0.0)
    config_text = tensorboard_text(run / "tb", "config")
    assert "train.report_to" in config_text and str(run) in config_text

    wb = wandb_run(run)
    assert [(st, pytest.approx(v)) for st, v in wb["history"]["train/loss"]] == losses
    assert wb["config"]["train.lr"] == pytest.approx(2e-4)
    assert wb["config"]["saie_lite.folder"] == str(run)
    assert wb["config"]["partner.api_key_env"] == "SAIE_TEST_KEY"
    assert wb["summary"]["train/updates"] == 3
    assert wb["summary"]["remarks/all/n"] == 10  # the whole run's, from the store

    client, (ml,) = mlflow_runs(tmp_path, **{"saie_lite.folder": str(run)})
    history = client.get_metric_history(ml.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(v)) for s, v in losses]
    assert ml.data.params["method.mode"] == "saie"
    assert ml.data.tags["saie_lite.kind"] == "train"
    assert client.get_run(ml.info.run_id).info.status == "FINISHED"

    # the key itself is nowhere in what the trackers wrote
    written = [p for p in run.rglob("*") if p.is_file()] + [tmp_path / "mlflow.db"]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_a_tracker_that_fails_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    real = EventFileWriter.add_event
    calls = []

    def full_disk(self, event):  # its start goes through, then the disk fills up
        calls.append(event)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real(self, event)

    monkeypatch.setattr(EventFileWriter, "add_event", full_disk)
    run = tmp_path / "run"
    r = dry_train(run, "tensorboard,wandb")
    assert r.exit_code == 0, r.output
    failed = [line for line in r.output.splitlines() if "tracking: tensorboard failed" in line]
    assert len(failed) == 1, r.output  # said once, not at every update
    assert "No space left on device" in failed[0] and "off for the rest" in failed[0]
    assert len(calls) == 3  # dropped after the failure: no write tried again
    assert [s["step"] for s in stored_steps(run)] == [1, 2, 3]  # the store has everything
    assert len(wandb_run(run)["history"]["train/loss"]) == 3  # the other tracker went on
    assert "finished: 3 updates" in r.output


def test_a_tracker_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    from saie_lite.track import tensorboard

    def refuse(self, info, note):
        raise PermissionError(13, "Permission denied", str(info.folder / "tb"))

    monkeypatch.setattr(tensorboard.TensorBoardTracker, "start", refuse)
    run = tmp_path / "run"
    r = dry_train(run, "tensorboard")
    assert r.exit_code == 0, r.output
    assert r.output.count("tracking: tensorboard failed to start (PermissionError") == 1
    assert "finished: 3 updates" in r.output


def test_a_missing_library_names_the_extra_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    run = tmp_path / "run"
    r = dry_train(run, "tensorboard,wandb")
    assert r.exit_code == 2
    assert "--report-to wandb needs the wandb package (not installed): " in r.output
    assert "pip install 'saie-lite[wandb]'" in r.output
    assert "Traceback" not in r.output
    assert not run.exists()


def test_unknown_tracker_names_are_refused():
    r = runner.invoke(app, ["train", "--dry-run", "--report-to", "tensorbord"])
    assert r.exit_code == 2
    assert "train.report_to: comma list of tensorboard, wandb, mlflow, trackio, or none" in r.output


def test_wandb_without_a_key_runs_offline_and_says_how_to_upload(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` either
    run = tmp_path / "run"
    r = dry_train(run, "wandb")
    assert r.exit_code == 0, r.output
    (offline_dir,) = (run / "wandb").glob("offline-run-*")
    assert f"wandb: offline (no WANDB_API_KEY); upload it later with: wandb sync {offline_dir}" in (
        r.output.replace("\n", "")
    )
    assert len(wandb_run(run)["history"]["train/loss"]) == 3


def test_a_resumed_run_may_turn_tracking_on(tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dry-run", "--limit", "6", "--max-steps", "2",
                            "--run-dir", str(run), "--live", "quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--dry-run", "--resume", str(run), "--max-steps", "3",
                            "--report-to", "tensorboard", "--live", "quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "resume: train.report_to changed to 'tensorboard'" in r.output
    assert [st for st, _ in tensorboard_scalars(run / "tb")["train/loss"]] == [3]


def test_eval_reports_every_metric_with_its_interval(tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--backend", "scripted", "--limit", "4", "--out", str(out)]
    r = runner.invoke(app, [*args, "--report-to", "tensorboard"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    tb = {k: v[-1][1] for k, v in tensorboard_scalars(out / "tb").items()}
    assert set(summary["metrics"]) == {"accuracy", "nll", "rouge"}
    for name, m in summary["metrics"].items():
        assert tb[f"eval/{name}"] == pytest.approx(m["mean"], rel=1e-6)
        assert tb[f"eval/{name}_ci95_low"] == pytest.approx(m["ci95"][0], rel=1e-6, abs=1e-7)
        assert tb[f"eval/{name}_ci95_high"] == pytest.approx(m["ci95"][1], rel=1e-6)
    assert tb["eval/n"] == 4


def scripted_ablation(out: Path, report_to: str) -> tuple[dict, dict]:
    """A finished base/sft/saie ablation on scripted backends, reporting to ``report_to``:
    its result and its rows by system."""
    from saie_lite import config
    from saie_lite.evaluate.ablation import run_ablation
    from saie_lite.ui.ablate_view import PlainAblateView

    sets = {
        "learner.backend": "scripted",
        "partner.backend": "scripted",
        "data.limit": 6,
        "data.split": "nodev",
        "ablate.eval_limit": 3,
        "ablate.systems": "base,sft,saie",
        "train.batch_size": 2,
        "eval.batch_size": 3,
        "train.report_to": report_to,
    }
    res = run_ablation(config.build(overrides=sets), out, PlainAblateView(open("/dev/null", "w")))
    assert res["status"] == "finished"
    return res, {r["system"]: r for r in res["rows"]}


def test_ablation_one_tracker_run_per_system_and_the_table(tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "abl"
    res, rows = scripted_ablation(out, "tensorboard,mlflow")
    sft = tensorboard_scalars(out / "runs" / "sft" / "tb")
    assert [(st, pytest.approx(v, rel=1e-6)) for st, v in sft["train/loss"]] == [
        (st, v) for st, v in rows["sft"]["loss"]
    ]
    base = tensorboard_scalars(out / "evals" / "base" / "tb")
    assert base["eval/accuracy"][-1][1] == pytest.approx(
        rows["base"]["metrics"]["accuracy"]["mean"]
    )
    assert "train/loss" not in base  # the base learner is not trained
    table = tensorboard_text(out / "tb", "ablation")
    assert table.splitlines()[0].startswith("| system | accuracy |")
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == [
        "| base", "| sft", "| saie",
    ]  # fmt: skip

    client, runs = mlflow_runs(tmp_path, **{"saie_lite.group": "abl"})
    assert sorted(r.info.run_name for r in runs) == ["abl/base", "abl/saie", "abl/sft", "abl/table"]
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["abl/saie"].data.params["method.mode"] == "saie"
    assert by_name["abl/sft"].data.metrics["eval/nll"] == pytest.approx(
        rows["sft"]["metrics"]["nll"]["mean"]
    )
    assert "p/vs_sft/accuracy" in by_name["abl/saie"].data.metrics
    artifacts = [a.path for a in client.list_artifacts(by_name["abl/table"].info.run_id)]
    assert artifacts == ["ablation.json"]
    # beside the database, not in ./mlruns of wherever the command ran
    assert list((tmp_path / "mlflow-artifacts").rglob("ablation.json"))


@pytest.fixture(scope="module")
def trackio_store(tmp_path_factory):
    """trackio reads TRACKIO_DIR once, at its first import (the tests' own importorskip
    comes before saie-lite's setting): set first, so no test writes to the user's store."""
    import importlib.util

    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is not installed")
    old = os.environ.get("TRACKIO_DIR")
    if "trackio" not in sys.modules:
        os.environ["TRACKIO_DIR"] = str(tmp_path_factory.mktemp("trackio"))
    from trackio import utils

    assert str(utils.TRACKIO_DIR).startswith(str(tmp_path_factory.getbasetemp()))
    yield Path(utils.TRACKIO_DIR)
    if old is None:
        os.environ.pop("TRACKIO_DIR", None)
    else:
        os.environ["TRACKIO_DIR"] = old


def trackio_runs(**config) -> list[dict]:
    """The runs in trackio's store whose config has these values, oldest first: each its
    name, config and logged rows, read with trackio's own storage reader."""
    from trackio.sqlite_storage import SQLiteStorage

    configs = SQLiteStorage.get_all_run_configs("saie-lite")
    out = []
    for rec in SQLiteStorage.get_run_records("saie-lite"):
        c = configs.get(rec["id"]) or {}
        if all(c.get(k) == v for k, v in config.items()):
            logs = SQLiteStorage.get_logs("saie-lite", run_id=rec["id"])
            out.append({"name": rec["name"], "config": c, "logs": logs})
    return out


def trackio_series(logs: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in logs if key in row]


def test_train_dry_run_reports_every_update_to_trackio(trackio_store, tmp_path, monkeypatch):
    from trackio import context_vars

    monkeypatch.setenv("SAIE_TEST_KEY", SECRET)
    run = tmp_path / "run"
    r = dry_train(run, "trackio", "--set", "partner.api_key_env=SAIE_TEST_KEY")
    assert r.exit_code == 0, r.output
    assert "* Trackio" not in r.output  # its own prints would land in our live view
    assert r.output.count("note: trackio: runs in ") <= 1
    steps = stored_steps(run)
    (tr,) = trackio_runs(**{"saie_lite.folder": str(run)})
    assert tr["name"] == "run"
    assert tr["config"]["train.lr"] == pytest.approx(2e-4)
    assert tr["config"]["method.mode"] == "saie"
    assert tr["config"]["partner.api_key_env"] == "SAIE_TEST_KEY"
    assert SECRET not in json.dumps(tr["config"])
    losses = [(s["step"], pytest.approx(s["loss"])) for s in steps]
    assert trackio_series(tr["logs"], "train/loss") == losses
    assert [v for _, v in trackio_series(tr["logs"], "train/target_tokens")] == [
        s["n_target_tokens"] for s in steps
    ]
    for key in ("train/lr", "time/update_s", "speed/tokens_per_s"):
        assert len(trackio_series(tr["logs"], key)) == 3, key
    # the closing figures, at the last step: the whole run's remarks, from the store
    assert trackio_series(tr["logs"], "train/updates") == [(3, 3)]
    *per_update, (last_step, whole_run) = trackio_series(tr["logs"], "remarks/all/n")
    assert [st for st, _ in per_update] == [2, 3] and last_step == 3
    assert sum(n for _, n in per_update) == whole_run == 10
    assert context_vars.current_run.get() is None  # finished: no global run left open


def test_trackio_ablation_one_finished_run_per_system(trackio_store, tmp_path):
    from trackio import context_vars

    out = tmp_path / "abl"
    res, rows = scripted_ablation(out, "trackio")
    runs = trackio_runs(_Group="abl")
    # one after the other, each finished before the next started
    assert [t["name"] for t in runs] == ["abl/base", "abl/sft", "abl/saie", "abl/table"]
    assert context_vars.current_run.get() is None
    by = {t["name"]: t for t in runs}
    assert trackio_series(by["abl/sft"]["logs"], "train/loss") == [
        (st, pytest.approx(v)) for st, v in rows["sft"]["loss"]
    ]
    assert not trackio_series(by["abl/base"]["logs"], "train/loss")  # base is not trained
    assert by["abl/saie"]["config"]["method.mode"] == "saie"
    assert by["abl/sft"]["config"]["method.mode"] == "sft"
    for system in ("base", "sft", "saie"):
        (last,) = [row for row in by[f"abl/{system}"]["logs"] if "eval/accuracy" in row][-1:]
        m = rows[system]["metrics"]["accuracy"]
        assert last["eval/accuracy"] == pytest.approx(m["mean"])
        assert last["eval/accuracy_ci95_low"] == pytest.approx(m["ci95"][0])
        assert last["eval/accuracy_ci95_high"] == pytest.approx(m["ci95"][1])
    assert any("p/vs_sft/accuracy" in row for row in by["abl/saie"]["logs"])
    (table,) = [row["ablation"] for row in by["abl/table"]["logs"] if "ablation" in row]
    assert [cells["system"] for cells in table["_value"]] == ["base", "sft", "saie"]


def test_a_failing_trackio_write_is_one_line(trackio_store, tmp_path, monkeypatch):
    from trackio.sqlite_storage import SQLiteStorage

    def full_disk(*args, **kwargs):  # trackio writes from its own thread
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SQLiteStorage, "bulk_log", staticmethod(full_disk))
    run = tmp_path / "run"
    r = dry_train(run, "trackio")
    assert r.exit_code == 0, r.output
    failed = [line for line in r.output.splitlines() if "tracking: trackio failed" in line]
    assert len(failed) == 1, r.output
    assert "No space left on device" in failed[0] and "off for the rest" in failed[0]
    assert "Warning" not in r.output
    assert [s["step"] for s in stored_steps(run)] == [1, 2, 3]
    assert "finished: 3 updates" in r.output


def test_a_missing_trackio_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)
    run = tmp_path / "run"
    r = dry_train(run, "trackio")
    assert r.exit_code == 2
    assert "--report-to trackio needs the trackio package (not installed): " in r.output
    assert "pip install 'saie-lite[trackio]'" in r.output
    assert not run.exists()


def test_trackio_stays_local_in_its_own_store(tmp_path):
    """A fresh process: trackio's store goes to $SAIE_LITE_HOME/trackio, a Space in the
    environment is ignored and, with a Hub token saved, nothing reaches the Hub (here a
    loopback server standing in for it, which counts what it is asked)."""
    import importlib.util
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"name": "someone"}')

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    if importlib.util.find_spec("trackio") is None:  # not imported here: its own process
        pytest.skip("trackio is not installed")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKIO_", "HF_"))}
    env.update(
        SAIE_LITE_HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        HF_TOKEN="hf_notarealtoken0123456789",
        HF_ENDPOINT=f"http://127.0.0.1:{httpd.server_address[1]}",
        TRACKIO_SPACE_ID="someone/saie-space",
    )
    run = tmp_path / "run"
    args = ["train", "--dry-run", "--limit", "6", "--run-dir", str(run), "--live", "plain"]
    try:
        p = subprocess.run(
            [sys.executable, "-m", "saie_lite.cli", *args, "--report-to", "trackio"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        httpd.shutdown()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert asked == []
    assert "trackio: TRACKIO_SPACE_ID is ignored" in out
    store = tmp_path / "home" / "trackio"
    assert f"trackio: runs in {store}; see them with: TRACKIO_DIR={store} trackio show" in (
        out.replace("\n", "")
    )
    assert (store / "saie-lite.db").is_file()
    assert not (tmp_path / "hf" / "trackio").exists()  # not trackio's default, HF_HOME
    assert "* Trackio" not in out and "Traceback" not in out
