"""The backend contract (saie_lite/protocols.py): every optional method or attribute the
core reads on a learner or partner is a declared capability, asked for only through
``supports``; wrappers report their inner learner's capabilities; ``register_learner``
and ``register_partner`` put a backend behind ``--backend`` and ``--partner``."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from typer.testing import CliRunner

from saie_lite import config, registry
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.protocols import (
    CAPABILITIES,
    ExportsAdapter,
    OnDevice,
    PreparesAhead,
    ScoresNll,
    SharesLearner,
    Snapshots,
    SyncsGradients,
    capabilities,
    supports,
)

ROOT = Path(__file__).resolve().parents[1]
# Names a learner, partner or agent goes by in the core and the backends.
BACKEND_NAMES = {"learner", "partner", "agent", "agents", "inner", "a", "first", "p"}


def _probed(node: ast.expr) -> str | None:
    """The backend-like name a hasattr/getattr call's object is, or None."""
    if isinstance(node, ast.Subscript):  # agents[0]
        node = node.value
    if isinstance(node, ast.Name) and node.id in BACKEND_NAMES:
        return node.id
    # self.learner, self.inner; not cfg.learner (a config section)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr in BACKEND_NAMES
    ):
        return f"self.{node.attr}"
    return None


def probes(source: str) -> list[str]:
    """hasattr/getattr calls on a learner-like name, except a wrapper's ``__getattr__``
    forwarding to what it wraps (``getattr(self.inner, name)``, no default)."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and node.args
        ):
            name = _probed(node.args[0])
            forwarding = function == "__getattr__" and node.func.id == "getattr"
            if name and not (forwarding and len(node.args) == 2):
                found.append(f"{node.lineno}: {node.func.id}({name}, ...)")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), "")
    return found


def test_no_module_probes_a_backend_outside_the_capability_check():
    bad = []
    for folder in ("saie_lite", "backends"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "saie_lite" / "protocols.py":
                continue
            bad += [f"{path.relative_to(ROOT)}:{p}" for p in probes(path.read_text())]
    assert bad == []


def test_the_probe_finder_catches_a_probe():
    source = (
        "def f(learner, agents, cfg):\n"
        "    if hasattr(learner, 'nll'):\n"
        "        return getattr(agents[0], 'stream', None)\n"
        "    return getattr(cfg.learner, 'dtype')\n"  # a config section: allowed
        "class W:\n"
        "    def __getattr__(self, name):\n"
        "        return getattr(self.inner, name)\n"  # forwarding: allowed
        "    def g(self):\n"
        "        return getattr(self.inner, 'device', None)\n"
    )
    assert probes(source) == [
        "2: hasattr(learner, ...)",
        "3: getattr(agents, ...)",
        "9: getattr(self.inner, ...)",
    ]


class TorchLike(ScriptedLearner):
    """A scripted learner with the members the wrappers ask their learner for."""

    device = "cuda"
    grad_sync = None
    answer_end = None
    model_dir = Path(".")
    seq2seq = quantized = False
    chat = tok = None
    stop_ids = ()

    def merged_weights(self, bf16: bool = False) -> dict:
        return {}

    def base_weights(self) -> dict:
        return {}

    def lora_factors(self) -> dict:
        return {}

    def save_adapter(self, directory: Path) -> None:
        self.save(directory)


def test_supports_reads_members_and_needs_methods_callable():
    learner = ScriptedLearner()
    assert supports(learner, ScoresNll) and not supports(learner, OnDevice)
    learner.nll = 3  # an attribute of that name is not the method
    assert not supports(learner, ScoresNll)
    assert not supports(None, SharesLearner)  # no partner (plain SFT)
    # Every capability's members are found, its bases' included.
    assert all(supports(TorchLike(), c) for c in (Snapshots, ExportsAdapter, SyncsGradients))
    assert {"OnDevice", "Snapshots", "ExportsAdapter"} <= set(capabilities(TorchLike()))
    assert "PreparesAhead" not in capabilities(TorchLike())
    assert len({c.__name__ for c in CAPABILITIES}) == len(CAPABILITIES)


def test_wrappers_report_their_learners_capabilities(tmp_path):
    from saie_lite.train.distributed import DataParallelLearner
    from saie_lite.train.fast_generation import SnapshotAnswers
    from saie_lite.train.vllm_answers import VllmAnswers

    # Nothing is asked of the server until answers are (port 9: none listens).
    cfg = config.build(
        overrides={"learner.snapshot_every": 2, "learner.vllm_url": "http://127.0.0.1:9/v1"}
    )
    inner = TorchLike()
    own = set(capabilities(inner))
    snap = SnapshotAnswers(inner, cfg, tmp_path / "snap")
    # Its own answers can be prepared ahead; everything else is the learner's.
    assert set(capabilities(snap)) == own | {"PreparesAhead"}
    assert snap.device == "cuda"
    vllm = VllmAnswers(inner, cfg, tmp_path / "run")
    assert set(capabilities(vllm)) == own
    dp = DataParallelLearner(TorchLike(), group=object())
    assert set(capabilities(dp)) == own
    # and what the learner lacks, the wrapper lacks
    assert not supports(DataParallelLearner(TorchLike(), group=object()), PreparesAhead)


def _memo_module():
    spec = importlib.util.spec_from_file_location(
        "memo_backend_inproc", ROOT / "examples" / "own-backend" / "memo_backend.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_register_learner_and_partner_put_a_backend_behind_the_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_extra", {"learners": {}, "partners": {}})
    memo = _memo_module()
    # A class is a factory too, though it has a ``load`` method as every learner does.
    registry.register_learner("memo-here", memo.MemoLearner)
    registry.register_partner("check-here", memo.create_partner)
    assert registry.factory("learners", "memo-here") is memo.MemoLearner
    assert "memo-here" in registry.available("learners")
    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--backend",
            "memo-here",
            "--partner",
            "check-here",
            "--limit",
            "6",
            "--live",
            "plain",
            "--run-dir",
            str(run),
            "--set",
            "train.batch_size=2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "learner=memo partner=check" in r.output and "finished: 4 updates" in r.output
    assert (run / "checkpoints" / "step-000004" / "memo.json").is_file()
