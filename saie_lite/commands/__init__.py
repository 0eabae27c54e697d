"""The commands of ``saie-lite``, one module per group; ``saie_lite/cli.py`` registers them."""
