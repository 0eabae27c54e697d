"""``saie-lite export``: a run's learner as merged Hugging Face weights, GGUF, or MLX.

Every format starts from one merged Hugging Face directory (LoRA folded into the base,
safetensors, tokenizer, chat template): torch runs merge with PEFT, MLX runs fuse with
mlx-lm. GGUF is written from it by ``gguf_export``; MLX by mlx-lm's converter (or, for
an MLX run, straight from the fused model).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from saie_lite.errors import UserError

FORMATS = ("hf", "gguf", "mlx")


def _run_config(run_dir: Path):
    from saie_lite import config as config_mod
    from saie_lite.train.checkpoint import usable
    from saie_lite.train.runs import saved_config

    cfg = config_mod.build(base=saved_config(run_dir))
    ckpt = usable(run_dir, note=lambda m: print(f"note: {m}", file=sys.stderr))
    if ckpt is None:
        raise UserError(f"{run_dir} has no checkpoint yet: train it first")
    line = not_the_last_update(run_dir, ckpt)
    if line:
        print(f"note: {line}", file=sys.stderr)
    return cfg, ckpt


def not_the_last_update(run_dir: Path, ckpt: Path) -> str | None:
    """Which update an export holds when it is not the run's last: the run is training
    now (its lock is held), it never ended (killed: no end mark), it stopped part-way,
    or its newer checkpoints are gone. None for a finished run's own last checkpoint."""
    import sqlite3

    from saie_lite.locks import holder
    from saie_lite.store import Store
    from saie_lite.train.checkpoint import check_files

    step = check_files(ckpt)["step"]
    what = f"exporting update {step} ({ckpt.name})"
    pid = holder(run_dir)
    if pid is not None:
        who = f"pid {pid}" if pid else "another process"
        return (
            f"the run is still training ({who}): {what}, the newest checkpoint so far; "
            "export again once it ends for its last update"
        )
    try:
        store = Store(run_dir / "saie.sqlite", reader=True)
        try:
            last = store.last_event("begin", "end")
            recorded = store.recorded_steps()
        finally:
            store.close()
    except (UserError, sqlite3.Error, OSError):
        return None  # the run's database cannot say more than the checkpoint did
    resume = f"saie-lite train --resume {run_dir} goes on"
    if last is not None and last[0] == "begin":
        return (
            f"the run never ended (killed, with no end mark) after {recorded} update(s): "
            f"{what}, its newest checkpoint; {resume}"
        )
    if recorded > step:
        return (
            f"the run recorded {recorded} updates, but its checkpoints past update {step} "
            f"are gone: {what}"
        )
    if last is not None:
        try:
            status = json.loads(last[1]).get("status")
        except (ValueError, AttributeError):
            status = None
        if status in ("stopped", "failed"):
            return f"the run {status} before its end: {what}; {resume}"
    return None


def merge_torch(cfg, ckpt: Path, out: Path) -> None:
    from saie_lite.backends.torch_peft import TorchLearner

    cfg.learner.quantize = "none"  # merge into full-precision weights
    cfg.learner.device = "cpu"
    learner = TorchLearner(cfg)
    learner.load_adapter(ckpt)
    merged = learner.model.merge_and_unload()
    # A base dequantized from GGUF remembers that in its config; the merged model is plain.
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config
    merged.save_pretrained(out, safe_serialization=True)
    learner.tok.save_pretrained(out)


def fuse_mlx(cfg, ckpt: Path, out: Path, dequantize: bool) -> None:
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    from saie_lite.backends.mlx import MLXLearner, config_fixes, resolve_model_path

    learner = MLXLearner(cfg)
    learner.load_adapter(ckpt)
    model = learner.model
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    model.update_modules(tree_unflatten(fused))
    if dequantize and learner.quantized:
        model = dequantize_model(model)
    src = Path(resolve_model_path(cfg.learner.model))
    config = (
        json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    )
    if dequantize:
        config.pop("quantization", None)
    config.pop("quantization_config", None)
    config.update(config_fixes(str(src)))  # mlx-lm readers need a top-level rope_theta
    save(out, src, model, learner.tok, config)


def modelfile(gguf_name: str, template: str | None) -> str:
    """An Ollama Modelfile; ChatML templates are translated, others left to Ollama."""
    lines = [f"FROM ./{gguf_name}"]
    if template and "<|im_start|>" in template:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}',
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
            'PARAMETER stop "<|im_end|>"',
        ]
    return "\n".join(lines) + "\n"


def export(run_dir: Path, to: str, quant: str = "f16", out: Path | None = None) -> list[Path]:
    """Write the export; returns the main files/directories written."""
    if to not in FORMATS:
        raise UserError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    run_dir = Path(run_dir)
    cfg, ckpt = _run_config(run_dir)
    # The run's own backend loads it; an MLX export also needs mlx-lm. Checked before
    # anything is written. (module, extra) pairs:
    needed = {"mlx": [("mlx_lm", "mlx")], "torch": [("torch", "torch")]}.get(
        cfg.learner.backend, []
    )
    if to == "mlx":
        needed.append(("mlx_lm", "mlx"))
    for module, extra in needed:
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"export --to {to} of this run needs {module}: pip install 'saie-lite[{extra}]'"
            )
    out = Path(out) if out else run_dir / "export" / (f"{to}-{quant}" if to == "gguf" else to)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: pick another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export(run_dir, cfg, ckpt, to, quant, out)
    except BaseException:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave nothing half-made behind
        raise


def _export(run_dir: Path, cfg, ckpt: Path, to: str, quant: str, out: Path) -> list[Path]:
    backend = cfg.learner.backend
    if to == "mlx" and backend == "mlx":
        fuse_mlx(cfg, ckpt, out, dequantize=False)
        return [out]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        merged = out if to == "hf" else Path(tmp) / "merged"
        merged.mkdir(exist_ok=True)
        if backend == "mlx":
            fuse_mlx(cfg, ckpt, merged, dequantize=True)
        elif backend == "torch":
            merge_torch(cfg, ckpt, merged)
        else:
            what = (
                "scripted models (--dry-run)" if backend in ("auto", "scripted") else repr(backend)
            )
            raise UserError(
                f"export needs a run trained with --backend torch or mlx; this run used {what}"
            )
        if to == "hf":
            return [out]
        if to == "mlx":
            from mlx_lm import convert

            from saie_lite.backends.mlx import config_fixes

            out.rmdir()  # mlx-lm's converter insists on creating the directory itself
            convert(hf_path=str(merged), mlx_path=str(out))
            # The converter copies a transformers 5 config whose rope_theta mlx-lm misses.
            cfg_path = out / "config.json"
            cfg_json = json.loads(cfg_path.read_text())
            cfg_json.update(config_fixes(str(merged)))
            cfg_path.write_text(json.dumps(cfg_json, indent=2))
            return [out]
        from saie_lite.gguf_writer import write_gguf

        name = f"saie-{run_dir.name}-{quant}.gguf"
        path = write_gguf(
            merged,
            out / name,
            quant,
            name=run_dir.name,
            hint=cfg.learner.model + (" smollm2" if cfg.learner.model == "embedded" else ""),
        )
        tcfg = json.loads((merged / "tokenizer_config.json").read_text())
        jinja = merged / "chat_template.jinja"
        template = tcfg.get("chat_template") or (jinja.read_text() if jinja.is_file() else None)
        (out / "Modelfile").write_text(modelfile(name, template))
        shutil.copy(merged / "config.json", out / "source-config.json")
        return [path, out / "Modelfile"]
