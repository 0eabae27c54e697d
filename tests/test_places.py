"""`logs list` finds runs, evaluations and ablations wherever they were made, and says
where each run stands (finished, stopped, failed, or never ended)."""

import shutil

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.cli import app
from saie_lite.evaluate.logs import run_state
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train.loop import train

runner = CliRunner()


def logs_list() -> list[str]:
    r = runner.invoke(app, ["logs", "list"])
    assert r.exit_code == 0, r.output
    return r.output.splitlines()


def test_runs_and_evaluations_made_elsewhere_are_listed(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    elsewhere = tmp_path / "projects"
    quiet = ["--dry-run", "--limit", "4", "--live", "quiet"]
    for run_dir in ([], ["--run-dir", str(elsewhere / "r1")]):
        assert runner.invoke(app, ["train", *quiet, *run_dir]).exit_code == 0
    ev = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "3"]
    assert runner.invoke(app, [*ev, "--out", str(elsewhere / "ev1")]).exit_code == 0
    # an evaluation inside a run is shown under that run, not again on its own
    assert runner.invoke(app, [*ev, "--out", str(elsewhere / "r1" / "eval")]).exit_code == 0
    lines = logs_list()
    assert "runs (2):" in lines and "evals (1):" in lines
    i = lines.index(f"  {elsewhere / 'r1'}")
    assert lines[i + 1] == "      finished: 2 updates (2 batches)"
    assert any(x.startswith("      eval eval: n=3") for x in lines[i:])
    j = lines.index(f"  {elsewhere / 'ev1'}")
    assert lines[j + 1].startswith("      n=3, accuracy")
    # a resumed run is noted once; a deleted one drops out of the list
    r = runner.invoke(app, ["train", "--resume", str(elsewhere / "r1"), "--live", "quiet"])
    assert r.exit_code == 0, r.output
    assert logs_list().count(f"  {elsewhere / 'r1'}") == 1
    shutil.rmtree(elsewhere / "r1")
    lines = logs_list()
    assert "runs (1):" in lines and f"  {elsewhere / 'r1'}" not in lines


def test_a_run_that_cannot_note_itself_in_the_home_still_runs(tmp_path, monkeypatch):
    """The logs database is a convenience: when it cannot be opened, the run goes on."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "logs.sqlite").write_bytes(b"not a database, but a user's file" * 100)
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    run_dir = tmp_path / "r1"
    r = runner.invoke(app, ["train", "--dry-run", "--limit", "4", "--live", "quiet",
                            "--run-dir", str(run_dir)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert run_state(run_dir) == ["finished: 2 updates (2 batches)"]


class StopsAtSecondUpdate(ScriptedLearner):
    def __init__(self, exc: BaseException, at: int = 2):
        super().__init__()
        self.exc, self.calls, self.at = exc, 0, at

    def train_step(self, sequences):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return super().train_step(sequences)


def run_until(run_dir, learner=None, stop=lambda: False, save_every=1):
    cfg = config.build(
        overrides={
            "train.batch_size": 2,
            "method.warmup_fraction": 0.2,
            "train.save_every": save_every,
        }
    )
    run_dir.mkdir(exist_ok=True)
    store = Store(run_dir / "saie.sqlite")
    try:
        train(cfg, learner or ScriptedLearner(), ScriptedPartner(),
              gsm8k.load("bundled")[0][:10], store, run_dir, stop=stop)  # fmt: skip
    finally:
        store.close()


def test_where_a_run_stands(tmp_path):
    stopped = tmp_path / "stopped"
    asked = iter([False, False, True])
    run_until(stopped, stop=lambda: next(asked, True))
    assert run_state(stopped) == [
        f"stopped at update 1 (1/5 batches): saie-lite train --resume {stopped} goes on"
    ]
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        run_until(failed, StopsAtSecondUpdate(RuntimeError("a model fault")))
    assert run_state(failed) == [
        f"failed at update 1 (1/5 batches) (see the error it printed): "
        f"saie-lite train --resume {failed} goes on once fixed"
    ]
    # Killed: nothing after the kill runs, so no end is recorded, and a resume goes on
    # from the last checkpoint (update 2 of the 3 made), or cannot (none yet).
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_until(killed, StopsAtSecondUpdate(KeyboardInterrupt(), at=4), save_every=2)
    assert run_state(killed) == [
        f"not finished (killed, or running now) at update 3: "
        f"saie-lite train --resume {killed} goes on from its checkpoint at update 2"
    ]
    early = tmp_path / "early"
    with pytest.raises(KeyboardInterrupt):
        run_until(early, StopsAtSecondUpdate(KeyboardInterrupt(), at=2), save_every=10)
    assert run_state(early) == [
        "not finished (killed, or running now) at update 1, before its first checkpoint: "
        "nothing to resume, start it again"
    ]
    # resumed to the end, the stopped run is finished
    run_until(stopped)
    assert run_state(stopped) == ["finished: 5 updates (5 batches)"]


def test_a_folder_made_again_as_another_kind_and_a_failed_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    place = tmp_path / "exp"
    quiet = ["--dry-run", "--limit", "4", "--live", "quiet"]
    assert runner.invoke(app, ["train", *quiet, "--run-dir", str(place)]).exit_code == 0
    shutil.rmtree(place)
    ev = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "3"]
    assert runner.invoke(app, [*ev, "--out", str(place)]).exit_code == 0
    lines = logs_list()
    assert "runs (0):" in lines and "evals (1):" in lines
    assert lines[lines.index(f"  {place}") + 1].startswith("      n=3, accuracy")
    # a model that does not load leaves no run behind, in the folder or in the list
    folder = tmp_path / "existing"
    folder.mkdir()
    r = runner.invoke(app, ["train", "--backend", "torch", "--model", str(tmp_path / "nomodel"),
                            "--partner", "scripted", "--limit", "4", "--live", "quiet",
                            "--run-dir", str(folder)])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert f"  {folder}" not in logs_list()


def test_a_noted_place_that_cannot_be_read_hides_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path / "home"))
    assert runner.invoke(app, ["train", "--dry-run", "--limit", "4", "--live", "quiet",
                               "--run-dir", str(tmp_path / "r1")]).exit_code == 0  # fmt: skip
    store = Store(tmp_path / "home" / "logs.sqlite")
    store.remember_place("runs", tmp_path / ("x" * 300))  # is_dir() raises: name too long
    store.close()
    lines = logs_list()
    assert "runs (1):" in lines and f"  {tmp_path / 'r1'}" in lines


def test_databases_opened_together_on_a_fresh_home_all_migrate(tmp_path):
    """Several processes (here threads, each with its own connection, which SQLite locks
    alike) open a new logs database at once: none fails, no note is lost."""
    import threading

    for trial in range(5):
        path = tmp_path / f"logs-{trial}.sqlite"
        start, errors = threading.Barrier(6), []
        threads = [
            threading.Thread(target=_note, args=(path, tmp_path / f"e{i}", start, errors))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        store = Store(path)
        assert len(store.places("evals")) == 6
        store.close()


def _note(path, place, start, errors) -> None:
    start.wait()
    try:
        store = Store(path)
        store.remember_place("evals", place)
        store.close()
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def test_a_killed_runs_line_falls_back_through_checkpoints_as_resume_does(tmp_path):
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_until(run, StopsAtSecondUpdate(KeyboardInterrupt(), at=5), save_every=2)
    ckpts = run / "checkpoints"
    assert (ckpts / "step-000004").is_dir() and (ckpts / "step-000002").is_dir()
    (ckpts / "step-000004" / "state.json").write_text("{bad json")
    (ckpts / "latest").write_bytes(b"\xff\xfe\x00bad")  # a damaged pointer too
    assert run_state(run) == [
        f"not finished (killed, or running now) at update 4: "
        f"saie-lite train --resume {run} goes on from its checkpoint at update 2"
    ]
