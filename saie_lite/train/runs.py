"""Run directories and the glue that starts (or resumes) a training run.

A run directory holds ``config.yaml`` (the resolved config), ``saie.sqlite`` (every
turn, update and cached remark) and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from pathlib import Path

from saie_lite import config as config_mod
from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.paths import home, writable_dir
from saie_lite.places import remember
from saie_lite.protocols import Example

RUN_HINT = "choose another --run-dir, or set SAIE_LITE_HOME to a writable directory"


def new_run_dir(cfg: Config) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return home() / "runs" / f"{stamp}-{cfg.method.mode}"


def saved_config(run_dir: Path) -> dict:
    """The config a run was made with. Every section is there in a file saie-lite
    wrote: an empty or partial one would quietly fill in defaults (another data set,
    another size), so it is refused."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no config.yaml: is it a saie-lite run directory?")
    if not (Path(run_dir) / "saie.sqlite").is_file():
        # an ablation's or an evaluation's folder also keeps a config.yaml; resuming it
        # would start a whole new run inside it
        if (Path(run_dir) / "runs").is_dir():
            raise UserError(
                f"{run_dir} is not a training run (no saie.sqlite): an ablation keeps its "
                f"runs in {Path(run_dir) / 'runs'}/SYSTEM"
            )
        raise UserError(
            f"{run_dir} is not a training run, or one stopped before it trained anything "
            f"(no saie.sqlite): start it again with --run-dir {run_dir}"
        )
    try:
        saved = config_mod.load_yaml(path)
    except UserError as e:
        raise UserError(f"the run's saved config is damaged: {e}") from None
    missing = [
        f.name for f in dataclasses.fields(Config) if not isinstance(saved.get(f.name), dict)
    ]
    if missing:
        raise UserError(
            f"{path} is damaged (no {', '.join(missing)} section): restore it from a backup, "
            "or start a new run"
        )
    return saved


def prepare_examples(cfg: Config, note=None) -> tuple[list[Example], dict[str, int]]:
    from saie_lite.tasks import get_task
    from saie_lite.tasks.detect import settle_task

    chosen = settle_task(cfg)  # --data without a task: the rows' shape chooses it
    if chosen and note:
        note(chosen)
    examples, skipped = get_task(cfg.data).load(cfg.data.path, cfg.data.split)
    if cfg.data.limit:
        order = list(range(len(examples)))
        random.Random(cfg.data.seed).shuffle(order)
        examples = [examples[i] for i in sorted(order[: cfg.data.limit])]
    return examples, skipped


def absolute_data_path(cfg: Config) -> None:
    """A local data file as a whole path in the saved config, so that --resume and the
    end-of-run hints work from any directory (the file was read just before)."""
    from saie_lite.tasks.common import is_local

    if cfg.data.path != "bundled" and is_local(cfg.data.path):
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())


def skipped_line(skipped: dict[str, int]) -> str:
    """'skipped 3 malformed data rows (2 empty answer, 1 missing question)'."""
    detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} malformed data rows ({detail})"


def resolve_backend(cfg: Config, note) -> None:
    """Turn ``learner.backend: auto`` into a concrete backend, and say why."""
    from saie_lite.registry import choose_learner

    if cfg.learner.backend == "auto":
        cfg.learner.backend, why = choose_learner("auto")
        note(f"learner backend: {cfg.learner.backend} ({why})")


def settle_partner_model(cfg: Config, note) -> None:
    """A server partner left at the default model name: ask the server which it serves,
    before the learner loads, so the run's config (and every resume) names it."""
    from saie_lite.paths import EMBEDDED

    pc = cfg.partner
    if pc.backend != "openai" or not cfg.method.stances or not pc.model.startswith(EMBEDDED):
        return
    from saie_lite.backends.openai_http import served_model

    asked = served_model(pc, note)
    if asked != pc.model:
        pc.model = asked
        note(f"partner model: {asked} (the one model {pc.url} serves)")


def build_backends(
    cfg: Config, dry_run: bool, run_dir: Path | None = None, with_partner: bool = True
):
    from saie_lite.registry import factory

    if dry_run:
        from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner

        return ScriptedLearner(), ScriptedPartner()
    from saie_lite.paths import EMBEDDED

    wants_partner = cfg.method.stances and with_partner
    if (
        wants_partner
        and cfg.partner.backend == "llama_cpp"
        and not cfg.partner.model.startswith(EMBEDDED)
    ):
        # A partner file is checked before the learner loads (a minute from the hub): a
        # typo in its path is then one line at once, not after the wait.
        from saie_lite.backends.llama_cpp import resolve_gguf

        resolve_gguf(cfg.partner.model)
    learner = factory("learners", cfg.learner.backend)(cfg)
    partner = None
    if wants_partner:  # plain SFT needs no partner: do not load one
        partner = factory("partners", cfg.partner.backend)(cfg, learner)
    on = cfg.learner.generate_on
    if on == "auto":
        on = "snapshot" if cfg.learner.snapshot_every else "local"
    if on == "snapshot" and run_dir is not None:
        from saie_lite.train.fast_generation import SnapshotAnswers

        learner = SnapshotAnswers(learner, cfg, Path(run_dir) / "snapshot")
    elif on == "vllm" and run_dir is not None:
        from saie_lite.train.vllm_answers import VllmAnswers

        learner = VllmAnswers(learner, cfg, Path(run_dir))
    return learner, partner


# The signals that stop a run the way Ctrl-C does: a scheduler's (SIGTERM: Slurm, Kubernetes,
# systemd, `kill`) and a closed terminal's (SIGHUP). Each ends the command with 128 + its
# number, as a shell reports a process ended by that signal (SIGINT 130, SIGTERM 143,
# SIGHUP 129). Where a platform lacks one (Windows: SIGHUP), it is left out.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A second stop signal: abort at once. ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.exit_code = 128 + signum


def exit_code(signum: int | None) -> int:
    return 128 + (signum or signal.SIGINT)


class StopFlag:
    """First stop signal (Ctrl-C, SIGTERM, SIGHUP): finish the current step, checkpoint,
    exit. Second: abort at once. ``on_first`` hears how to abort ("Ctrl-C again aborts");
    ``signum`` is the signal that asked to stop (None while none did)."""

    def __init__(self, on_first=None):
        self.requested = False
        self.signum: int | None = None
        self.on_first = on_first
        self._old: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum, frame):
        if signum == getattr(signal, "SIGHUP", None):
            _leave_closed_terminal()
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum
        if self.on_first:
            again = (
                "Ctrl-C again aborts"
                if signum == signal.SIGINT
                else f"a second {signal.Signals(signum).name} aborts"
            )
            self.on_first(again)

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def _leave_closed_terminal() -> None:
    """After SIGHUP the terminal is usually gone, and every write to it fails (EIO): the
    checkpoint and the resume line must not fail with it. Output that goes to a terminal
    goes nowhere from now on; output to a file or a pipe (nohup, a log) stays."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in (1, 2):
            try:
                if os.isatty(fd):
                    os.dup2(devnull, fd)
            except OSError:
                pass
    finally:
        os.close(devnull)


class WithRemarkFigures:
    """The view, with the whole run's remark diagnostics (resumed parts included, read
    from the store) added to the end-of-run summary it prints."""

    def __init__(self, view, store):
        self._view, self._store = view, store

    def __getattr__(self, name):
        return getattr(self._view, name)

    def on_end(self, summary: dict) -> None:
        from saie_lite.remarks import rates

        summary["remarks"] = rates(self._store.remark_diagnostics())
        self._view.on_end(summary)


def refuse_foreign_folder(run_dir: Path) -> None:
    """A new run goes into a new or empty folder, or one a run was made in (its
    config.yaml is saie-lite's): never into a folder of the user's, whose config.yaml it
    would overwrite and beside whose files it would add its own."""
    from saie_lite.locks import LOCK_NAME

    try:
        entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    except (FileNotFoundError, NotADirectoryError):
        return  # made anew (a file in the way is writable_dir's to report)
    except OSError:
        return  # unreadable: writable_dir says why
    if not entries or _made_by_saie_lite(run_dir):
        return
    raise UserError(
        f"{run_dir} is not empty and is not a saie-lite run (no saie.sqlite, and no "
        "config.yaml of saie-lite's): pick a new or empty --run-dir; nothing was written there"
    )


def _made_by_saie_lite(run_dir: Path) -> bool:
    """A run's folder: its database with its config, or the config alone (a run killed
    while its model loaded). An ablation's folder (runs/) and an evaluation's
    (summary.json) keep other things, and are not runs."""
    if (run_dir / "runs").is_dir() or (run_dir / "summary.json").is_file():
        return False
    if (run_dir / "saie.sqlite").is_file() and (run_dir / "config.yaml").is_file():
        return True
    try:
        saved = config_mod.load_yaml(run_dir / "config.yaml")
    except (UserError, OSError):
        return False
    return isinstance(saved, dict) and all(
        isinstance(saved.get(f.name), dict) for f in dataclasses.fields(Config)
    )


def start_training(cfg: Config, run_dir: Path, resume: bool, dry_run: bool, view) -> dict:
    from saie_lite.train.checkpoint import latest
    from saie_lite.train.distributed import rank

    run_dir = Path(run_dir)
    from saie_lite.track.registry import require

    require(cfg.train.report_to)  # a tracker's missing library: said before anything is written
    if not resume:
        refuse_foreign_folder(run_dir)
    if not resume and latest(run_dir) is not None:
        raise UserError(
            f"{run_dir} already holds a run: resume it with --resume {run_dir} or pick another --run-dir"
        )
    if dry_run and resume and cfg.learner.backend not in ("scripted", "auto"):
        # scripted models cannot go on from real weights (and its config must stay real)
        raise UserError(
            f"{run_dir} was trained with the {cfg.learner.backend} learner: a dry run cannot "
            "go on with it; resume it without --dry-run"
        )
    real = (cfg.learner.backend, cfg.partner.backend)  # a dry run plans memory for these
    if dry_run:
        # The run's config says what ran, so that eval --run, export and --resume of a
        # dry run load the scripted models its checkpoints belong to.
        cfg.learner.backend = cfg.partner.backend = "scripted"
    else:
        resolve_backend(cfg, view.on_event)
        # A resumed run's config already names it; of data-parallel processes only the
        # first talks to the partner (and saves the config).
        if not resume and rank() == 0:
            settle_partner_model(cfg, view.on_event)
    for line in config_mod.unusual(cfg):  # allowed, but said before anything trains
        view.on_event(line)
    examples, skipped = prepare_examples(cfg, view.on_event)
    if not resume:
        absolute_data_path(cfg)
    if skipped:
        view.on_event(skipped_line(skipped))
    if cfg.data.task == "custom":
        from saie_lite.tasks.custom import describe

        view.on_event(describe(cfg.data))
    from saie_lite.train.memory import check_memory

    # before anything is written or loaded: a run that cannot fit stops here
    check_memory(cfg, examples, view.on_event, backends=real, dry_run=dry_run)
    created = not run_dir.exists()
    writable_dir(run_dir, "run directory", RUN_HINT)
    from saie_lite.locks import hold

    # One writer per run: a second `train --resume` of the same run is refused here, before
    # it writes anything. Of data-parallel processes (all on this run) only the first
    # writes the run, so only it holds the lock.
    lock = hold(run_dir, "run", view.on_event) if rank() == 0 else None
    try:
        return _train_in(cfg, run_dir, resume, dry_run, view, examples, created, lock)
    finally:
        if lock is not None:
            lock.release()


def _train_in(cfg, run_dir: Path, resume: bool, dry_run: bool, view, examples, created, lock):
    from saie_lite.store import Store
    from saie_lite.train.loop import train

    group = join_group(cfg, dry_run)
    main = group is None or group.is_main
    if main:
        config_mod.save(cfg, run_dir / "config.yaml")
    try:
        learner, partner = build_backends(cfg, dry_run, run_dir, with_partner=main)
    except BaseException:
        # A model that does not load leaves no run behind (`logs list` would show an
        # empty one, and the same --run-dir would then be refused as taken).
        if main and not resume:
            (run_dir / "config.yaml").unlink(missing_ok=True)
            if lock is not None:
                lock.release()  # its file must not keep the folder from being removed
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    if main:
        remember("runs", run_dir)  # now that it is a run (a model that fails leaves none)
    if group is not None:
        from saie_lite.train.distributed import DataParallelLearner

        learner = DataParallelLearner(learner, group)
    # Only the main process writes the run's database and draws the view; the others
    # keep their rows in memory, where they are thrown away.
    store = Store(run_dir / "saie.sqlite" if main else Path(":memory:"))
    try:
        with StopFlag(lambda again: view.on_event(f"stopping after this step ({again})")) as flag:
            # Data-parallel processes must stop at the same batch (or the next collective
            # waits forever): one that was signalled stops them all.
            stop = flag if group is None else (lambda: group.sum_number(float(flag())) > 0)
            from saie_lite.track.feeds import tracked_training

            shown = WithRemarkFigures(view, store) if main else None
            with tracked_training(cfg, run_dir, shown, view.on_event) as callbacks:
                summary = train(
                    cfg, learner, partner, examples, store, run_dir, callbacks, stop,
                    group=group,
                )  # fmt: skip
    finally:
        store.close()
    summary["signal"] = flag.signum  # the command's exit code says which one stopped it
    return summary


def join_group(cfg: Config, dry_run: bool):
    """The process group when launched on several processes (accelerate, torchrun)."""
    from saie_lite.train.distributed import Group, world_size

    if world_size() <= 1:
        return None
    if dry_run or cfg.learner.backend != "torch":
        raise UserError(
            f"data-parallel training (WORLD_SIZE={world_size()}) needs the torch learner: "
            "--backend torch, without --dry-run"
        )
    return Group(cfg.learner.device if cfg.learner.device != "auto" else _auto_device())


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
