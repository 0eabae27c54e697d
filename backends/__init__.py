"""saie-lite backends, installed as ``saie_lite.backends`` (see pyproject.toml).

Each module implements the ``Learner`` and/or ``Partner`` protocol from
``saie_lite.protocols`` and is registered through an entry point.
"""
