"""saie-lite: fine-tune a small language model with SAIE (supportive and adversarial
discussions with a partner model). No backend library is imported here: ``saie-lite
--help`` and the core stay light; backends load their libraries when they are built."""

__version__ = "0.1.0"
