"""The models, loaded once and shared by every conversation (and every server session).

Loading is the slow part of start-up, so it happens here exactly once; a conversation or a one-shot
`reply` only creates light per-user state (an LLM session with its own KV cache, VAD state, buffers).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Config, ConversationConfig
from app.profiles import Profile, resolve_profile
from app.store import fetch

if TYPE_CHECKING:
    from app.conversation import Conversation
    from app.reply_stream import Lanes
    from app.tools import ToolRegistry
    from asr.whisper import Transcriber
    from llm.engine import Engine
    from llm.remote import RemoteLLM
    from llm.session import Session
    from tts.piper_voice import Voice

log = logging.getLogger(__name__)


@dataclass
class Assistant:
    config: Config
    profile: Profile
    transcriber: Transcriber
    voice: Voice
    llm: Engine | RemoteLLM  # local: target weights, tokenizer, drafter; remote: one client (llm.backend)
    load_seconds: dict[str, float] = field(default_factory=dict)
    # Tools every conversation of this assistant gets (e.g. skills): `assistant.tools.register(fn)`.
    tools: ToolRegistry = field(default_factory=lambda: _new_registry())

    @classmethod
    def load(cls, config: Config) -> Assistant:
        from asr.whisper import Transcriber
        from tts.piper_voice import Voice

        profile = resolve_profile(config)
        offline = config.models.offline
        times: dict[str, float] = {}

        started = time.perf_counter()
        transcriber = Transcriber(fetch(profile.asr, offline=offline))
        times["asr"] = time.perf_counter() - started

        started = time.perf_counter()
        voice = Voice(
            fetch(profile.tts, offline=offline),
            length_scale=config.tts.length_scale,
            speaker=config.tts.speaker,
        )
        times["tts"] = time.perf_counter() - started

        started = time.perf_counter()
        if _backend(config) == "openai":
            llm = load_remote(config)
        else:
            llm = load_engine(profile, config, offline=offline)
        times["llm"] = time.perf_counter() - started
        log.info("models loaded: %s", ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
        assistant = cls(config, profile, transcriber, voice, llm, times)
        from app.skills import install_skills

        install_skills(assistant)  # the tools of the skills [skills] enables (idempotent; off by default)
        return assistant

    @functools.cached_property
    def lanes(self) -> Lanes:
        """One worker thread per model (ASR, LLM, TTS), shared by every conversation of this assistant,
        so heavy calls queue instead of oversubscribing the cores (created on first use)."""
        from app.batch_lane import BatchLane, TimedLane
        from app.media_lanes import AsrLane, PriorityLane
        from app.reply_stream import Lanes

        target = getattr(self.llm, "target", None)  # the local engine's model; a remote LLM has none
        if _backend(self.config) == "openai" or target is None or not getattr(self.config.llm, "batch", True):
            # A remote LLM waits on the network, not on a core: then every reply in flight gets a thread.
            # (llm.batch = false: the local engine one call at a time, as before batching — for comparisons.)
            workers = 1 if target is not None else 2 * self.config.server.max_sessions + 2
            llm = TimedLane("llm", workers=workers)
        else:  # the local engine: concurrent replies' decode steps share one forward (continuous batching)
            llm = BatchLane("llm", target)
        # Timed: /healthz says which stage queues. Prioritised: turn-ending decodes and first pieces go first.
        priorities = getattr(self.config.server, "lane_priority", True)
        asr = AsrLane("asr", priorities, batch=getattr(self.config.server, "asr_batch", True))
        return Lanes(asr, llm, PriorityLane("tts", priorities))

    def new_session(self) -> Session:
        """A fresh LLM chat (own KV cache) with the configured system prompt."""
        return self.llm.session(system_prompt=self.config.llm.system_prompt)

    def conversation(
        self, config: ConversationConfig | None = None, tools: ToolRegistry | None = None, tool_choice="auto"
    ) -> Conversation:
        """A conversation; `tools` are its own, added to the assistant's (docs/tools.md)."""
        from app.conversation import Conversation

        return Conversation(self, config or self.config.conversation, tools=tools, tool_choice=tool_choice)


def _new_registry() -> ToolRegistry:
    from app.tools import ToolRegistry

    return ToolRegistry()


def _backend(config: Config) -> str:
    from app.config import ConfigError

    if config.llm.backend not in ("local", "openai"):
        raise ConfigError(f"llm.backend: {config.llm.backend!r} is not one of local, openai")
    return config.llm.backend


def load_remote(config: Config) -> RemoteLLM:
    """llm.backend = "openai": replies come from an OpenAI-compatible server (docs/scaling.md)."""
    from app.config import ConfigError
    from llm.remote import RemoteConfig, RemoteLLM, RemoteLLMError

    llm = config.llm
    key = llm.api_key or ""
    if llm.api_key_file:
        try:
            key = Path(llm.api_key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"llm.api_key_file: cannot read {llm.api_key_file}: {exc.strerror}") from None
    if not llm.model:
        raise ConfigError("llm.backend = 'openai' needs llm.model (the name the server serves the model as)")
    if llm.timeout_s <= 0 or llm.max_retries < 0:
        raise ConfigError("llm.timeout_s must be > 0 and llm.max_retries >= 0")
    try:
        remote = RemoteLLM(RemoteConfig(llm.base_url, llm.model, key, llm.timeout_s, llm.max_retries))
    except RemoteLLMError as exc:
        raise ConfigError(str(exc)) from None
    log.info("llm backend: remote %s at %s", llm.model, llm.base_url)
    return remote


def _check_fp8_options(config: Config) -> None:
    from app.config import ConfigError

    if config.llm.fp8_rounding not in ("gptq", "nearest"):
        raise ConfigError(f"llm.fp8_rounding: {config.llm.fp8_rounding!r} is not one of gptq, nearest")
    if config.llm.fp8_act_terms not in (1, 2):
        raise ConfigError(f"llm.fp8_act_terms: {config.llm.fp8_act_terms!r} is not 1 or 2")


def _fp8_options(config: Config, engine: Engine, backend, model_source: Path) -> dict:
    """prepare_model's FP8 options from [llm] fp8_rounding / fp8_act_terms (only read for FP8 targets)."""
    if not backend.fp8:
        return {}
    options: dict = {"act_terms": config.llm.fp8_act_terms}
    if config.llm.fp8_rounding == "gptq":
        from app.store import cache_root
        from llm.gptq import cache_path, calibration_sequences

        options["calibration"] = calibration_sequences(engine.tokenizer)
        options["gptq_cache"] = cache_path(cache_root() / "fp8", model_source)
    return options


def load_engine(profile: Profile, config: Config, *, offline: bool = False) -> Engine:
    """The LLM target and drafter of a profile, on the device and number format the hardware allows
    (`llm.backends` decides: FP8 target on H100-class GPUs, bf16 on other GPUs, fp32 on CPU)."""
    from llm.backends import graphed, prepare_model, select_backend
    from llm.engine import Engine

    _check_fp8_options(config)
    target = select_backend(config.llm.device, config.llm.dtype, profile=profile.name, role="target")
    if target.device.type == "cpu" and config.llm.threads > 0:
        import torch

        torch.set_num_threads(config.llm.threads)  # process-wide: the LLM shares 2 cores with ASR and TTS
    draft = profile.draft
    if draft not in ("ngram", "none", "head", ""):
        draft = str(fetch(draft, offline=offline))
    llm_source = fetch(profile.llm, offline=offline)
    engine = Engine.load(
        llm_source,
        draft=draft,
        dtype=target.dtype,
        device=str(target.device),
        k_min=config.llm.k_min,
        k_max=config.llm.k_max,
    )
    fp8_options = _fp8_options(config, engine, target, Path(llm_source))
    # On CUDA the hot shapes (1-token draft step, (k+1)-token verify) replay CUDA graphs; no-op elsewhere.
    from llm.loading import ensure_hf_folder

    cpu_options = {"quant": config.llm.quant, "source": ensure_hf_folder(llm_source), "compile": config.llm.compile}
    engine.target = graphed(prepare_model(engine.target, target, **cpu_options, **fp8_options),
                            target, config.llm.k_max)  # fmt: skip
    if engine.draft_model is not None:
        draft_backend = select_backend(
            config.llm.device, config.llm.dtype, profile=profile.name, role="draft"
        )
        engine.draft_model = graphed(prepare_model(engine.draft_model, draft_backend), draft_backend, 0)
    log.info("llm backend: %s (%s); drafter: %s", target.name, target.reason, engine.drafter_name)
    return engine
