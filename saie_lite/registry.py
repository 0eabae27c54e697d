"""Backend registry: a name -> factory table fed by entry points.

Built-in backends are declared in ``pyproject.toml`` under the entry-point groups
``saie_lite.learners`` and ``saie_lite.partners``, the same door a third-party package
uses, so nothing here knows any backend by name. ``register_*`` adds one at run time
(tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from saie_lite.errors import UserError
from saie_lite.protocols import LearnerFactory, PartnerFactory

Factory = Callable[..., Any]  # a LearnerFactory or a PartnerFactory, by kind
_extra: dict[str, dict[str, Factory]] = {"learners": {}, "partners": {}}


def register_learner(name: str, factory: LearnerFactory) -> None:
    """``--backend NAME`` (and ``learner.backend``) builds ``factory(cfg)`` from now on,
    in this process; it wins over an entry point of the same name."""
    _extra["learners"][name] = factory


def register_partner(name: str, factory: PartnerFactory) -> None:
    """``--partner NAME`` builds ``factory(cfg, learner)`` from now on, in this process."""
    _extra["partners"][name] = factory


def available(kind: str) -> dict[str, Any]:
    """name -> entry point or factory, for kind 'learners' or 'partners'."""
    found: dict[str, Any] = {ep.name: ep for ep in entry_points(group=f"saie_lite.{kind}")}
    found.update(_extra[kind])
    return found


def choose_learner(
    requested: str, system: str | None = None, machine: str | None = None
) -> tuple[str, str]:
    """Resolve ``auto``: (backend, reason). MLX on Apple silicon when mlx-lm is installed."""
    import platform
    from importlib.util import find_spec

    if requested != "auto":
        return requested, "asked for"
    system, machine = system or platform.system(), machine or platform.machine()
    if system == "Darwin" and machine == "arm64":
        if find_spec("mlx_lm") is not None:
            return "mlx", "Apple silicon with mlx-lm installed"
        return "torch", "Apple silicon, but mlx-lm is not installed (pip install 'saie-lite[mlx]')"
    return "torch", f"{system}/{machine} is not Apple silicon"


def factory(kind: str, name: str) -> Factory:
    table = available(kind)
    if name not in table:
        role = kind.rstrip("s")
        raise UserError(
            f"unknown {role} backend {name!r}; available: {', '.join(sorted(table)) or 'none'}"
        )
    item = table[name]
    # Added with register_*: the factory itself (a class may well have a `load` method).
    # Not an isinstance test against importlib.metadata's EntryPoint either: once the
    # importlib_metadata backport is imported (mlflow does), entry_points() yields its class.
    if _extra[kind].get(name) is item:
        return item
    try:
        return item.load()
    except ImportError as e:
        extra = {"torch": "torch", "llama_cpp": "llamacpp", "mlx": "mlx"}.get(name, name)
        raise UserError(
            f"backend {name!r} needs a package that is not installed ({e.name or e}): "
            f"pip install 'saie-lite[{extra}]'"
        ) from None
