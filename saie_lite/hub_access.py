"""Whether the Hugging Face hub can be reached, asked once per process before a hub name
is used.

Without a network, huggingface_hub retries every request with backoff and prints each
retry: about a minute of noise before the error, even for a model already in the local
cache. One short connection attempt settles it instead: unreachable means offline mode
(``HF_HUB_OFFLINE``), so a cached model or dataset loads at once and an uncached one
fails at once, with a line that says why.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

_checked: bool | None = None  # None: not asked yet; else whether we switched offline


def switched_offline() -> bool:
    """True when this process found the hub unreachable and turned offline mode on."""
    return bool(_checked)


def settle(timeout: float = 3.0) -> None:
    """Turn on offline mode when the hub's host does not answer within ``timeout``.
    A user's own ``HF_HUB_OFFLINE`` (either way) is left alone."""
    global _checked
    if _checked is not None:
        return
    _checked = False
    if os.environ.get("HF_HUB_OFFLINE") is not None:
        return
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return
    except OSError:
        pass
    _checked = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Libraries imported before this point read the variable at import: tell them too.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        cfg = sys.modules["datasets.config"]
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True
    print(
        f"note: the hub ({host}) cannot be reached: using the local cache only",
        file=sys.stderr,
        flush=True,
    )


def offline_reason(name: str) -> str | None:
    """Why a load failed, when this process went offline on its own (else None: the
    library's own message says it better)."""
    if not switched_offline():
        return None
    return (
        f"the hub cannot be reached and {name!r} is not in the local cache: connect once "
        "to download it, or give a local path"
    )
