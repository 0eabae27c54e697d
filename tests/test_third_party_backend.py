"""A backend from another distribution, through the public door only: the package in
examples/own-backend/ (the code docs/backends.md shows) is made importable with its
entry points, as an installed package is, and ``saie-lite train`` and ``saie-lite eval
--run`` run with it in a fresh process."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own-backend"
MODULE = EXAMPLE / "memo_backend.py"


@pytest.fixture
def site(tmp_path) -> Path:
    """A folder that importlib.metadata reads as holding the installed package: the
    module, and a .dist-info whose entry_points.txt says what the example's pyproject
    declares (what ``pip install examples/own-backend`` writes)."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    out = tmp_path / "site"
    info = out / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (out / MODULE.name).write_text(MODULE.read_text())
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    groups = [
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in project["entry-points"].items()
    ]
    (info / "entry_points.txt").write_text("\n".join(groups))
    return out


def cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "saie_lite.cli", *args],
        cwd=cwd,  # not the checkout: saie_lite comes from the installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_third_party_backend_trains_and_evaluates(site, tmp_path):
    run, data = tmp_path / "run", ["--task", "gsm8k", "--data", "bundled", "--limit", "10"]
    r = cli(site, tmp_path, "train", "--backend", "memo", "--partner", "check", "--limit", "6",
            "--live", "plain", "--run-dir", str(run), "--set", "train.batch_size=2")  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    assert "learner=memo partner=check" in r.stdout and "finished: 4 updates" in r.stdout
    trained = json.loads((run / "checkpoints" / "step-000004" / "memo.json").read_text())
    assert len(trained) == 6  # every example's question, warm-up and discussions
    r = cli(site, tmp_path, "eval", "--run", str(run), *data, "--out", str(tmp_path / "after"))
    assert r.returncode == 0, r.stderr + r.stdout
    after = json.loads((tmp_path / "after" / "summary.json").read_text())
    assert after["settings"]["agents"] == ["memo+run@step-000004"]
    r = cli(site, tmp_path, "eval", "--backend", "memo", "--model", "none", *data,
            "--out", str(tmp_path / "before"))  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    before = json.loads((tmp_path / "before" / "summary.json").read_text())
    # The run's checkpoint was loaded: it answers the questions it trained on.
    assert before["strict"]["correct"] == 0 < after["strict"]["correct"]


def test_a_missing_capability_is_one_line(site, tmp_path):
    r = cli(site, tmp_path, "eval", "--backend", "memo", "--model", "none", "--task", "gsm8k",
            "--data", "bundled", "--limit", "2", "--metrics", "nll",
            "--out", str(tmp_path / "ev"))  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: metric nll does not apply here: agent memo cannot score log-likelihoods"
    ]


def test_the_docs_show_the_example_as_it_is():
    page = (ROOT / "docs" / "backends.md").read_text()
    section = page.split("## Write your own backend", 1)[1]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    code = {lang: text for lang, text in blocks}
    assert code["python"] == MODULE.read_text()
    assert code["toml"] in (EXAMPLE / "pyproject.toml").read_text()
    # Only the public contract: no module of saie_lite other than the protocols.
    tree = ast.parse(MODULE.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("saie_lite")} == {"saie_lite.protocols"}
