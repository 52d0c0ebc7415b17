"""`bench llm`'s llamacpp method without llama.cpp: which binding is chosen, and the one-line skip reasons.

No binding is needed (the `llamacpp` extra is optional); `find_spec` is replaced to play each install state.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import llm_llamacpp


@pytest.mark.parametrize(
    ("installed", "chosen"),
    [
        (set(), None),
        ({"llama_cpp_py_sync"}, "llama_cpp_py_sync"),
        ({"llama_cpp"}, "llama_cpp"),
        ({"llama_cpp", "llama_cpp_py_sync"}, "llama_cpp"),  # llama-cpp-python is preferred
    ],
)
def test_binding_choice_and_skip_reason(monkeypatch, installed, chosen):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in llm_llamacpp.BINDINGS:
            return real("json") if name in installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert llm_llamacpp.available_binding() == chosen
    gguf = Path("model.gguf")
    reason = llm_llamacpp.skip_reason(gguf)
    if chosen is None:
        assert reason is not None and "specvoice[llamacpp]" in reason and "\n" not in reason
        with pytest.raises(llm_llamacpp.LlamaCppUnavailable):
            llm_llamacpp.open_llamacpp(gguf, 1)
    else:
        assert reason is None
        assert "GGUF" in llm_llamacpp.skip_reason(None)


def test_a_library_too_new_for_this_libc_gives_a_one_line_reason():
    error = OSError(
        "cannot load library '/x/libllama.so': /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not "
        "found (required by /x/libllama.so).\nAdditionally, ctypes.util.find_library() did not manage ..."
    )
    reason = llm_llamacpp._one_line("llama_cpp_py_sync", error)
    assert "\n" not in reason and "GLIBC_2.38" in reason and "llama-cpp-py-sync" in reason
    other = llm_llamacpp._one_line("llama_cpp", RuntimeError("Failed to load model\nmore"))
    assert other == "llama-cpp-python: RuntimeError: Failed to load model"
