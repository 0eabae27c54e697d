"""Learner on Apple MLX through mlx-lm: LoRA, and QLoRA (LoRA on a quantized base).

Runs on Apple silicon (Metal) and, slowly, on Linux CPUs with ``mlx[cpu]``. Unlike
mlx-lm's own trainer, a checkpoint here holds the adapter *and* the optimizer state and
step, so an interrupted MLX run resumes exactly like a torch run.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from saie_lite.chat_tokens import IGNORE, ChatTokenLearner, ChatTokens, micro_batches
from saie_lite.errors import UserError
from saie_lite.protocols import Chat, StepStats, TrainSequence


def resolve_model_path(name: str) -> str:
    from saie_lite.paths import EMBEDDED, local_or_hub

    if name == EMBEDDED:
        # The GGUF is dequantized once (through transformers) into safetensors that
        # mlx-lm loads like any Hugging Face directory.
        try:
            from saie_lite.backends.torch_models import ensure_embedded_learner
        except ImportError:
            raise UserError(
                "preparing the embedded model needs the torch extra once: "
                "pip install 'saie-lite[torch]' (or give --model an MLX or HF directory)"
            ) from None
        return str(ensure_embedded_learner())
    return local_or_hub(name)


def config_fixes(path: str) -> dict:
    """Config keys mlx-lm needs but a transformers 5 ``config.json`` may not have.

    transformers 5 writes ``rope_parameters: {rope_theta: ...}`` where mlx-lm reads a
    top-level ``rope_theta`` (defaulting to 10000): without this, a model such as
    SmolLM2 (theta 100000) would run with the wrong rotary frequencies.
    """
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return {}
    raw = json.loads(cfg_path.read_text())
    rope = raw.get("rope_parameters") or {}
    if "rope_theta" not in raw and "rope_theta" in rope:
        return {"rope_theta": rope["rope_theta"]}
    return {}


def lora_keys(model, targets: str) -> set[str] | None:
    """mlx-lm LoRA keys (paths inside a block) for 'all-linear' or a comma list of names."""
    if targets == "all-linear":
        return None  # mlx-lm's default: every linear layer of the adapted blocks
    wanted = {t.strip() for t in targets.split(",") if t.strip()}
    keys = {
        path
        for path, m in model.layers[0].named_modules()
        if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and path.split(".")[-1] in wanted
    }
    if not keys:
        raise UserError(f"learner.lora_targets {targets!r} matches no linear layer of this model")
    return keys


def masked_ce_sum(model, ids: mx.array, labels: mx.array) -> mx.array:
    """Summed next-token cross-entropy over positions whose label is not IGNORE."""
    logits = model(ids[:, :-1]).astype(mx.float32)
    targets = labels[:, 1:]
    mask = targets != IGNORE
    ce = nn.losses.cross_entropy(logits, mx.where(mask, targets, 0), reduction="none")
    return (ce * mask).sum()


class MLXLearner(ChatTokenLearner):
    def __init__(self, cfg):
        from mlx_lm import load
        from mlx_lm.tuner.utils import linear_to_lora_layers

        lc = cfg.learner
        self.cfg = cfg
        self.name = f"mlx:{lc.model}"
        path = resolve_model_path(lc.model)
        try:
            self.model, self.tok = load(
                path,
                tokenizer_config={"trust_remote_code": lc.trust_remote_code},
                model_config=config_fixes(path),
            )
        except (OSError, ValueError, FileNotFoundError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            from saie_lite.hub_access import offline_reason

            why = offline_reason(lc.model, str(e)) or first[:200]
            raise UserError(f"could not load learner model {lc.model!r}: {why}") from None
        if lc.dtype in ("bfloat16", "float16"):
            self.model.set_dtype(getattr(mx, lc.dtype))
        self.quantized = lc.quantize == "4bit"
        if self.quantized:
            # QLoRA on MLX is plain LoRA on a quantized base.
            nn.quantize(self.model, group_size=64, bits=4)
        self.model.freeze()
        mx.random.seed(cfg.train.seed)  # LoRA init is random: same seed, same adapter
        layers = lc.lora_layers or len(self.model.layers)
        lora = {"rank": lc.lora_r, "scale": lc.lora_alpha / lc.lora_r, "dropout": lc.lora_dropout}
        keys = lora_keys(self.model, lc.lora_targets)
        if keys is not None:
            lora["keys"] = keys
        linear_to_lora_layers(self.model, layers, lora)
        self.chat = ChatTokens(self.tok._tokenizer)
        # bias_correction=True: the same update rule as torch.optim.AdamW, so a recipe
        # means the same thing on both backends.
        self.opt = optim.AdamW(
            learning_rate=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            bias_correction=True,
        )
        self.opt.init(self.model.trainable_parameters())
        self.loss_and_grad = nn.value_and_grad(self.model, masked_ce_sum)
        self.step = 0
        self.tokens_generated = 0

    # -- generation ---------------------------------------------------------------
    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        from mlx_lm.generate import batch_generate
        from mlx_lm.sample_utils import make_sampler

        self.model.eval()
        prompts = [self.chat.prompt_ids(c) for c in chats]
        out = batch_generate(
            self.model,
            self.tok,
            prompts,
            max_tokens=max_new_tokens,
            sampler=make_sampler(temp=temperature),
            return_token_ids=True,
        )
        self.tokens_generated += sum(len(t) for t in out.token_ids)
        return [
            self.tok._tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.token_ids
        ]

    def stream(self, chat: Chat, max_new_tokens: int, temperature: float = 0.0):
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        self.model.eval()
        for r in stream_generate(
            self.model,
            self.tok,
            self.chat.prompt_ids(chat),
            max_tokens=max_new_tokens,
            sampler=make_sampler(temp=temperature),
        ):
            self.tokens_generated += 1
            if r.token not in self.chat.stop_ids:
                yield r.text

    def choice_logprobs(
        self, chats: list[Chat], prefix: str, options: list[list[str]]
    ) -> list[list[float]]:
        self.model.eval()
        out = []
        for chat, opts in zip(chats, options):
            ids = mx.array([self.chat.ids(self.chat.render(chat, True) + prefix)])
            logp = nn.log_softmax(self.model(ids)[0, -1].astype(mx.float32))
            out.append([logp[self.chat.ids(o)[0]].item() for o in opts])
        return out

    # -- training -----------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        mx.random.seed(seed)

    def _pad(self, items):
        width = max(len(i) for i, _ in items)
        pad = self.tok._tokenizer.pad_token_id
        ids = mx.array([i + [pad] * (width - len(i)) for i, _ in items])
        labels = mx.array([lab + [IGNORE] * (width - len(lab)) for _, lab in items])
        return ids, labels

    def train_step(self, sequences: list[TrainSequence]) -> StepStats:
        self.model.train()
        encoded, n_target = self.chat.encode_batch(sequences, self.cfg.learner.max_seq_len)
        if n_target == 0:
            raise UserError("a training batch has no target tokens: raise learner.max_seq_len")
        mb = self.cfg.train.micro_batch_size
        grads, total = None, 0.0
        for start, end in micro_batches([len(i) for i, _ in encoded], mb):
            loss_sum, g = self.loss_and_grad(self.model, *self._pad(encoded[start:end]))
            # Scale by the whole batch's target count so accumulation equals one batch.
            g = tree_map(lambda x: x / n_target, g)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(grads, loss_sum)
            total += loss_sum.item()
        if self.cfg.train.grad_clip > 0:
            grads, _ = optim.clip_grad_norm(grads, self.cfg.train.grad_clip)
        self.opt.update(self.model, grads)
        mx.eval(self.model.parameters(), self.opt.state)
        self.step += 1
        return StepStats(
            total / n_target, len(sequences), n_target, sum(len(i) for i, _ in encoded)
        )

    # -- persistence --------------------------------------------------------------
    def save(self, directory: Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(
            str(d / "adapters.safetensors"), dict(tree_flatten(self.model.trainable_parameters()))
        )
        mx.save_safetensors(str(d / "optimizer.safetensors"), dict(tree_flatten(self.opt.state)))
        lc = self.cfg.learner
        meta = {
            "step": self.step,
            "model": lc.model,
            "backend": "mlx",
            "rank": lc.lora_r,
            "scale": lc.lora_alpha / lc.lora_r,
            "quantized": self.quantized,
        }
        (d / "learner.json").write_text(json.dumps(meta))

    def load_adapter(self, directory: Path) -> None:
        path = Path(directory) / "adapters.safetensors"
        if not path.is_file():
            raise UserError(
                f"no MLX adapter in {directory}: expected {path.name} (a run checkpoint)"
            )
        self.model.load_weights(list(mx.load(str(path)).items()), strict=False)
        mx.eval(self.model.parameters())

    def load(self, directory: Path) -> None:
        d = Path(directory)
        self.load_adapter(d)
        self.opt.state = tree_unflatten(list(mx.load(str(d / "optimizer.safetensors")).items()))
        mx.eval(self.opt.state)
        self.step = json.loads((d / "learner.json").read_text())["step"]


def create_learner(cfg) -> MLXLearner:
    return MLXLearner(cfg)
