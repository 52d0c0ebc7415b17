"""One typed configuration, read from a TOML file, then `SPECVOICE_*` environment variables, then CLI flags.

Each section is a dataclass; a setting is addressed as `section.field` everywhere: in the file
(`[llm]\ntemperature = 0.7`), in the environment (`SPECVOICE_LLM_TEMPERATURE=0.7`) and on the command line
(`--set llm.temperature=0.7`). Later sources win.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one or two short, "
    "plain sentences. Never use lists, markdown, emoji or code."
)


class ConfigError(ValueError):
    """A setting that cannot be read or does not exist."""


@dataclass
class ModelsConfig:
    """Model sources: `pypi:<dist>==<ver>#<path>`, `hf:<repo-id>` or a local path. Empty = from the profile."""

    profile: str = "cpu"
    asr: str = ""
    llm: str = ""
    draft: str = ""  # a model source, "ngram" (prompt lookup) or "none"
    tts: str = ""
    offline: bool = False


@dataclass
class LLMConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 | fp8
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_reply_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    # Speculation length range (tokens drafted per step). 8-16: a verify of up to 17 tokens costs about
    # what a 1-token step does in bf16 (bench llm), so drafting fewer than 8 wastes the forward.
    k_min: int = 8
    k_max: int = 16
    # FP8 targets (gpu-h100, or dtype=fp8): weight rounding "gptq" (calibrated, ~96 % greedy agreement with
    # fp32 on SmolLM2) or "nearest" (no calibration pass, ~92 %); activations in 1 or 2 fp8 terms per token
    # (2 costs a second accumulator, not a second weight read; docs/gpu.md has the measurements).
    fp8_rounding: str = "gptq"
    fp8_act_terms: int = 2
    threads: int = 1  # torch threads on CPU: 1 leaves the other core to ASR/TTS, which run at the same time
    seed: int | None = None


@dataclass
class TTSConfig:
    length_scale: float = 1.0  # >1 speaks slower
    speaker: int | None = None


@dataclass
class ConversationConfig:
    """Turn-taking knobs. Documented in README ('Conversation loop')."""

    vad_threshold: float = 0.5
    hangover_ms: int = 500  # silence that ends a turn
    # Shorter hangover when the transcript reads as a complete sentence. Not below ~450 ms: people pause
    # ~400 ms mid-sentence and Whisper punctuates the pause ("Could you tell me? How to..."); at 300 ms
    # bench voice cut in on 1 of 4 paused questions, at 450 ms on none, with the same p50.
    complete_hangover_ms: int = 450
    min_speech_ms: int = 200
    barge_in: bool = True
    echo_policy: str = "half_duplex"  # half_duplex | full_duplex (headset)
    output_sample_rate: int = 22050
    turn_detection: str | None = "server_vad"  # server_vad | semantic_vad | None (manual commit)
    auto_respond: bool = True
    preemptive: bool = True  # start the reply at the first silence; play it only if the turn ends
    preemptive_silence_ms: int = 64  # silence before a preemptive reply starts (VAD frames are 32 ms)
    decode_interval_ms: int = 300  # re-decode the utterance after this much new audio
    preroll_ms: int = 300  # audio kept from before the detected speech onset
    echo_tail_ms: int = 300  # half_duplex: keep the mic closed this long after the reply's audio ends
    system_prompt: str = ""  # "" = llm.system_prompt
    max_reply_tokens: int = 0  # 0 = llm.max_reply_tokens
    voice: str = ""  # a Piper voice source (model store syntax); "" = the assistant's voice


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_sessions: int = 8
    max_message_bytes: int = 1 << 20
    max_queued_audio_s: float = 30.0
    allowed_origins: list[str] = field(default_factory=list)


@dataclass
class Config:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def set(self, dotted: str, value: Any) -> None:
        """Set `section.field` from a typed value or a string (coerced to the field's type)."""
        section_name, _, name = dotted.partition(".")
        section = getattr(self, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or not name:
            raise ConfigError(f"unknown setting {dotted!r} (sections: {', '.join(_sections())})")
        types = typing.get_type_hints(type(section))
        if name not in types:
            known = ", ".join(f.name for f in dataclasses.fields(section))
            raise ConfigError(f"unknown setting {dotted!r}; {section_name} has: {known}")
        setattr(section, name, _coerce(dotted, value, types[name]))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(dotted: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and optional else hint
    if value is None or (isinstance(value, str) and optional and value.lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{dotted} cannot be empty")
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float, str):
            return base(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{dotted}: cannot use {value!r} (expected {getattr(base, '__name__', base)})"
        ) from None
    return value


def default_config_path() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(root) / "specvoice" / "config.toml"


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """File (explicit path, $SPECVOICE_CONFIG or the XDG default if present), then env, then overrides."""
    environ = os.environ if environ is None else environ
    config = Config()
    explicit = path or environ.get("SPECVOICE_CONFIG")
    file = Path(explicit) if explicit else default_config_path()
    if explicit and not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{file}: top-level key {section!r} must be a [section]")
            for name, value in values.items():
                config.set(f"{section}.{name}", value)
    for section in _sections():
        prefix = f"SPECVOICE_{section.upper()}_"
        for key, value in environ.items():
            if key.startswith(prefix):
                config.set(f"{section}.{key[len(prefix) :].lower()}", value)
    if environ.get("SPECVOICE_PROFILE"):
        config.set("models.profile", environ["SPECVOICE_PROFILE"])
    if environ.get("SPECVOICE_OFFLINE"):
        config.set("models.offline", environ["SPECVOICE_OFFLINE"])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            config.set(dotted, value)
    return config
