"""saie-lite: fine-tune a small language model with SAIE (supportive and adversarial
discussions with a partner model). No backend library is imported here: ``saie-lite
--help`` and the core stay light; backends load their libraries when they are built.

The Python API (``saie_lite.api``: ``Config``, ``configure``, ``run_train``, ``run_eval``,
``run_ablate``, ``print_event``, ``UserError``) is reached from here lazily, by module ``__getattr__``: ``import saie_lite``
imports none of it (nor torch), and the core, which imports this package, never depends on
the layer above it (tests/test_layout.py allows exactly this one lazy import)."""

__version__ = "0.1.0"

API = ("Config", "UserError", "configure", "print_event", "run_ablate", "run_eval", "run_train")


def __getattr__(name: str):
    if name in API:
        from saie_lite import api

        return getattr(api, name)
    raise AttributeError(f"module 'saie_lite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
