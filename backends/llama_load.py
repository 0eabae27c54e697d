"""Every llama.cpp model this project loads goes through ``open_llama``: one place that
knows what the library's defaults get wrong (the threads that read prompts, and AMX).

On CPUs with AMX (Xeon Sapphire Rapids and later) llama.cpp moves quantized weights into
an AMX buffer, and on some of those machines the first decode then dies with a
segmentation fault (ggml-org/llama.cpp#20824, open without a fix; it killed every
debate and run here, Q4_1 and q8_0 alike, without a Python error to catch). Where the
build reports AMX, weights load without the CPU's "extra" buffer types (AMX and the
repacked layouts): slower on the quantized types, but a run that finishes.
``SAIE_LITE_LLAMA_AMX=1`` keeps them, for a machine where they work.
"""

from __future__ import annotations

import os
import threading

ENV = "SAIE_LITE_LLAMA_AMX"
_lock = threading.Lock()


def amx_build() -> bool:
    """Whether this llama.cpp build runs AMX kernels on this CPU (its own report)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def extra_buffers_wanted() -> bool:
    """False where the AMX buffers would be used and the user has not asked for them."""
    return os.environ.get(ENV, "").strip() == "1" or not amx_build()


def _without_extra_buffers(default):
    def params():
        p = default()
        # Older releases have no such field: the attribute is then ignored.
        p.use_extra_bufts = False
        return p

    return params


def open_llama(**kwargs):
    """``llama_cpp.Llama(**kwargs)``, with the extra buffer types off where they crash,
    and prompts read on the threads asked for: ``Llama`` reads prompts on
    ``n_threads_batch``, every core unless given, whatever ``n_threads`` says, so a
    partner put on one thread (``partner.n_threads: 1``, to leave a core to the update)
    still took both cores for most of its work.

    ``Llama`` takes no argument for that field: it fills its model parameters from
    ``llama_model_default_params()``, so the defaults are swapped while it loads (under a
    lock, so a second thread loading at the same time sees the same defaults)."""
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    if kwargs.get("n_threads") and not kwargs.get("n_threads_batch"):
        kwargs["n_threads_batch"] = kwargs["n_threads"]
    if extra_buffers_wanted():
        return llama_cpp.Llama(**kwargs)
    with _lock:
        default = lib.llama_model_default_params
        lib.llama_model_default_params = _without_extra_buffers(default)
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            lib.llama_model_default_params = default


def serve(argv: list[str]) -> None:
    """``python -m llama_cpp.server`` with the AMX guard (the tests' real server; its
    threads are its own flags)."""
    import runpy
    import sys

    import llama_cpp.llama_cpp as lib

    if not extra_buffers_wanted():
        # The server loads its model after start-up: swapped for the process's life.
        lib.llama_model_default_params = _without_extra_buffers(lib.llama_model_default_params)
    sys.argv = ["llama_cpp.server", *argv]
    runpy.run_module("llama_cpp.server", run_name="__main__")


if __name__ == "__main__":
    import sys

    serve(sys.argv[1:])
