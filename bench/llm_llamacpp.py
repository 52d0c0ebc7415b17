"""llama.cpp on the same GGUF for `bench llm`: greedy generation from token ids, over either binding.

The `llamacpp` extra. `llama_cpp` (llama-cpp-python) is preferred when installed; else `llama_cpp_py_sync`
(llama-cpp-py-sync: a prebuilt CPU wheel, CFFI bindings of llama.cpp's C API; llama-cpp-python has no
binary wheel here and compiles for 15+ minutes on 2 cores). `make test` needs neither.

Both are driven the way our engine is timed: a fresh cache per prompt, the prompt's token ids (the same
chat template and tokenizer output as the other methods) evaluated but for the last one (`prefill`), then
the last prompt token and one token per forward, greedy (argmax, no penalties), up to a stop token or the
cap (`generate`). The context runs with llama.cpp's own defaults otherwise (flash attention `auto`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
from collections.abc import Iterator
from pathlib import Path

BINDINGS = ("llama_cpp", "llama_cpp_py_sync")  # import names, in order of preference
DISTRIBUTIONS = {"llama_cpp": "llama-cpp-python", "llama_cpp_py_sync": "llama-cpp-py-sync"}
N_CTX = 1024
N_BATCH = 512


def available_binding() -> str | None:
    """The import name of the first installed binding, or None."""
    return next((name for name in BINDINGS if importlib.util.find_spec(name) is not None), None)


def skip_reason(gguf: Path | None) -> str | None:
    """Why the llamacpp method cannot run here (one line), or None when it can."""
    if available_binding() is None:
        return "no llama.cpp binding installed (pip install 'specvoice[llamacpp]')"
    if gguf is None:
        return "the model is not a GGUF file"
    return None


class LlamaCppUnavailable(RuntimeError):
    """The binding is installed but cannot run here (one-line reason)."""


def open_llamacpp(gguf: Path, threads: int) -> LlamaCppGreedy:
    """The model and a context with `threads` threads for decoding and prompt evaluation alike."""
    binding = available_binding()
    try:
        if binding == "llama_cpp":
            return _PythonBinding(gguf, threads)
        if binding == "llama_cpp_py_sync":
            return _SyncBinding(gguf, threads)
    except (OSError, RuntimeError) as exc:
        raise LlamaCppUnavailable(_one_line(binding, exc)) from exc
    raise LlamaCppUnavailable(skip_reason(None) or "no llama.cpp binding")


def _one_line(binding: str, exc: Exception) -> str:
    text = str(exc)
    needed = re.search(r"version `(GLIBC_[0-9.]+)' not found", text)
    if needed:  # the prebuilt wheel is linked against a newer C library than this system's
        return (f"{DISTRIBUTIONS[binding]}'s prebuilt library needs {needed.group(1)}, this system has glibc "
                f"{platform.libc_ver()[1] or '?'}: run `python -m bench.llamacpp_compat` (docs/llm.md)")  # fmt: skip
    return f"{DISTRIBUTIONS[binding]}: {type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"


class LlamaCppGreedy:
    """One model + context; `prefill` then `generate` per prompt."""

    binding = ""

    def describe(self) -> str:
        """Binding, version and the CPU features its llama.cpp was built with (a generic wheel may lack
        what a native build would use)."""
        name = DISTRIBUTIONS[self.binding]
        return f"{name} {importlib.metadata.version(name)}; {self.system_info().strip(' |')}"

    def system_info(self) -> str:
        raise NotImplementedError

    def prefill(self, ids: list[int]) -> None:
        """Empty the cache and evaluate all prompt tokens but the last."""
        raise NotImplementedError

    def generate(self, ids: list[int], max_tokens: int, stop: set[int]) -> Iterator[int]:
        """After `prefill(ids)`: the greedy continuation, the stop token excluded."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _PythonBinding(LlamaCppGreedy):
    """llama-cpp-python's high-level `Llama`: `eval` the prefix, then `generate` reuses it (it evaluates
    only the tokens past its cached prefix) with temperature 0, i.e. argmax."""

    binding = "llama_cpp"

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=threads,
                         n_threads_batch=threads, verbose=False)  # fmt: skip

    def system_info(self) -> str:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode()

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids[:-1])

    def generate(self, ids: list[int], max_tokens: int, stop: set[int]) -> Iterator[int]:
        produced = 0
        for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if token in stop:
                return
            yield token
            produced += 1
            if produced >= max_tokens:
                return


_LOG_SINK = []  # keeps the C log callback alive


def _silence_sync_logs(lib, ffi) -> None:
    """llama.cpp logs every load and graph detail to stderr unless given a callback."""
    if not _LOG_SINK:
        _LOG_SINK.append(ffi.callback("ggml_log_callback", lambda level, text, data: None))
        lib.llama_log_set(_LOG_SINK[0], ffi.NULL)


class _SyncBinding(LlamaCppGreedy):
    """llama-cpp-py-sync: its `Llama` loads the model and context; decoding goes through llama.cpp's C API
    (`llama_batch_get_one` + `llama_decode`, a greedy sampler), as llama.cpp's own simple example does —
    its text-level `generate` would re-tokenise the prompt."""

    binding = "llama_cpp_py_sync"

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp_py_sync import Llama
        from llama_cpp_py_sync._cffi_bindings import get_ffi, get_lib

        _silence_sync_logs(get_lib(), get_ffi())
        self.llm = Llama(str(gguf), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=threads, n_threads_batch=threads,
                         flash_attn_type=-1, verbose=False)  # fmt: skip
        self.lib, self.ffi = self.llm._lib, self.llm._ffi
        self.ctx, self.vocab = self.llm._ctx, self.llm._vocab
        self.lib.llama_set_embeddings(self.ctx, False)  # the wrapper turns them on for its audio API
        self.greedy = self.lib.llama_sampler_init_greedy()

    def system_info(self) -> str:
        return self.ffi.string(self.lib.llama_print_system_info()).decode()

    def _decode(self, ids: list[int]) -> None:
        for start in range(0, len(ids), N_BATCH):
            chunk = self.ffi.new("llama_token[]", ids[start : start + N_BATCH])
            result = self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(chunk, len(chunk)))
            if result != 0:
                raise RuntimeError(f"llama_decode failed with code {result}")

    def prefill(self, ids: list[int]) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self._decode(ids[:-1])

    def generate(self, ids: list[int], max_tokens: int, stop: set[int]) -> Iterator[int]:
        self._decode(ids[-1:])
        for produced in range(max_tokens):
            token = int(self.lib.llama_sampler_sample(self.greedy, self.ctx, -1))
            if token in stop or self.lib.llama_vocab_is_eog(self.vocab, token):
                return
            yield token
            if produced + 1 < max_tokens:
                self._decode([token])

    def close(self) -> None:
        if self.greedy is not None:
            self.lib.llama_sampler_free(self.greedy)
            self.greedy = None
        self.llm.close()
