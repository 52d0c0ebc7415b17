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
    from asr.whisper import Transcriber
    from llm.engine import Engine
    from llm.session import Session
    from tts.piper_voice import Voice

log = logging.getLogger(__name__)


@dataclass
class Assistant:
    config: Config
    profile: Profile
    transcriber: Transcriber
    voice: Voice
    llm: Engine  # target weights, tokenizer and drafter kind, shared by all sessions
    load_seconds: dict[str, float] = field(default_factory=dict)

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
        llm = load_engine(profile, config, offline=offline)
        times["llm"] = time.perf_counter() - started
        log.info("models loaded: %s", ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
        return cls(config, profile, transcriber, voice, llm, times)

    @functools.cached_property
    def lanes(self) -> Lanes:
        """One worker thread per model (ASR, LLM, TTS), shared by every conversation of this assistant,
        so heavy calls queue instead of oversubscribing the cores (created on first use)."""
        from app.reply_stream import Lane, Lanes

        return Lanes(Lane("asr"), Lane("llm"), Lane("tts"))

    def new_session(self) -> Session:
        """A fresh LLM chat (own KV cache) with the configured system prompt."""
        return self.llm.session(system_prompt=self.config.llm.system_prompt)

    def conversation(self, config: ConversationConfig | None = None) -> Conversation:
        from app.conversation import Conversation

        return Conversation(self, config or self.config.conversation)


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
    if draft not in ("ngram", "none", ""):
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
    engine.target = graphed(prepare_model(engine.target, target, **fp8_options),
                            target, config.llm.k_max)  # fmt: skip
    if engine.draft_model is not None:
        draft_backend = select_backend(
            config.llm.device, config.llm.dtype, profile=profile.name, role="draft"
        )
        engine.draft_model = graphed(prepare_model(engine.draft_model, draft_backend), draft_backend, 0)
    log.info("llm backend: %s (%s); drafter: %s", target.name, target.reason, engine.drafter_name)
    return engine
