"""Where the torch learner's weights come from: model names to directories, and the
embedded model's one-time conversion from its GGUF to float safetensors."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from saie_lite.errors import UserError


def quiet_transformers() -> None:
    """The live view owns the terminal: no library progress bars or deprecation chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def ensure_embedded_learner() -> Path:
    """Dequantize the embedded GGUF into float safetensors once; later loads read the cache.

    transformers can read a GGUF (``gguf_file=``) but refuses ``save_pretrained`` on the
    result, so the model is rebuilt from its config and state dict before saving.
    """
    import torch

    from saie_lite.fsutil import atomic_publish_dir
    from saie_lite.paths import embedded_gguf, embedded_learner_dir, writable_dir

    target = embedded_learner_dir()
    if (target / "model.safetensors").is_file():
        return target
    writable_dir(target.parent, "the model cache (SAIE_LITE_HOME)")
    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF)
    except ModuleNotFoundError:
        raise UserError(
            "reading the embedded GGUF needs the 'gguf' package: pip install gguf"
        ) from None
    # The GGUF reader draws its own tqdm bar, which the live view does not want.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # tqdm reads TQDM_DISABLE when it is first imported, which datasets has done by now:
    # the converter's bar is silenced by giving it nowhere to draw.
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    config = loaded.config
    if getattr(config, "quantization_config", None) is not None:
        # The float weights are plain; keeping the GGUF marker would make transformers
        # treat every later load as quantized and refuse to save merged models.
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    atomic_publish_dir(tmp, target)
    return target


def resolve_model_path(name: str) -> str:
    from saie_lite.paths import EMBEDDED, local_or_hub

    if name == EMBEDDED:
        return str(ensure_embedded_learner())
    return local_or_hub(name)
