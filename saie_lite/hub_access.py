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
import threading
from urllib.parse import urlparse

_checked: bool | None = None  # None: not asked yet; else whether we switched offline


def switched_offline() -> bool:
    """True when this process found the hub unreachable and turned offline mode on."""
    return bool(_checked)


def _hub_host() -> str:
    try:
        return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    except ValueError:
        return ""


def _target() -> tuple[str, int] | None:
    """Where a hub request would connect first: the HTTPS proxy when one is set for the
    hub's host (a machine that reaches the world only through it), else the hub; None
    when ``HF_ENDPOINT`` cannot be read (the library then says what is wrong)."""
    from urllib.request import getproxies, proxy_bypass

    try:
        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host = url.hostname or "huggingface.co"
        port = url.port or (80 if url.scheme == "http" else 443)
        proxies = getproxies()
        proxy = proxies.get(url.scheme or "https") or proxies.get("all")
        if proxy and not proxy_bypass(host):
            p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            return p.hostname or host, p.port or 80
    except ValueError:
        return None
    return host, port


def _answers(host: str, port: int, timeout: float) -> bool:
    """A TCP connection within ``timeout``, the name lookup included (a lookup with no
    network can hang for longer than any connect timeout)."""
    ok: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def settle(timeout: float = 3.0) -> None:
    """Turn on offline mode when the hub (or the proxy in front of it) does not answer
    within ``timeout``. A user's own ``HF_HUB_OFFLINE`` (either way) is left alone."""
    global _checked
    if _checked is not None:
        return
    _checked = False
    target = _target()
    if os.environ.get("HF_HUB_OFFLINE") is not None or target is None:
        return
    if _answers(*target, timeout):
        return
    _checked = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Libraries imported before this point read the variable at import: tell them too.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        cfg = sys.modules["datasets.config"]
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True
    hub = sys.modules.get("transformers.utils.hub")
    if hub is not None and hasattr(hub, "_is_offline_mode"):  # transformers 4.x
        hub._is_offline_mode = True
    via = (
        f"the hub, through the proxy {target[0]}"
        if target[0] != _hub_host()
        else f"the hub ({target[0]})"
    )
    print(
        f"note: {via} cannot be reached: using the local cache only",
        file=sys.stderr,
        flush=True,
    )


# What the libraries say when offline mode stops a download (transformers, huggingface_hub,
# datasets); any other failure keeps its own message.
_OFFLINE_WORDS = ("offline", "couldn't connect", "cannot find the requested files", "cached files")


def offline_reason(name: str, error: str) -> str | None:
    """Why a load failed, when this process went offline on its own and the library's
    ``error`` is about that (else None: its own message says it better)."""
    if not switched_offline() or not any(w in error.lower() for w in _OFFLINE_WORDS):
        return None
    return (
        f"the hub cannot be reached and {name!r} is not in the local cache: connect once "
        "to download it, or give a local path"
    )
