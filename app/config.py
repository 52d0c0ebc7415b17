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


# Chosen by scripts/choose_system_prompt.py on a dev set of voice questions; "voice assistant" in the prompt
# made SmolLM2-135M answer "as a voice assistant, I'm unable to..." (held-out refusals: docs/llm.md).
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant talking with someone. Give a direct, useful answer in one or two short, "
    "plain sentences, without lists or markdown."
)


class ConfigError(ValueError):
    """A setting that cannot be read or does not exist."""


@dataclass
class ModelsConfig:
    """Model sources: `pypi:<dist>==<ver>#<path>`, `hf:<repo-id>` or a local path. Empty = from the profile."""

    profile: str = "cpu"
    asr: str = ""
    llm: str = ""
    draft: str = ""  # a model source, "ngram" (prompt lookup), "head" (trained draft head) or "none"
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
    # CPU weights: "auto" runs the shipped Q4_1 file's own codes in packed int4 matmuls for 1-token steps
    # (bf16 for verifies and prefill; llm/quant.py), "none" keeps bf16/fp32 weights. See docs/llm.md.
    quant: str = "auto"
    # torch.compile the 1-token step (inductor, frozen weights). Off: on the 2-core dev box compiling took
    # 41 s (warm inductor cache) to 4 min (cold, busy) for a 1.5x faster step (docs/llm.md).
    compile: bool = False
    # Concurrent replies' decode steps share one forward (app/batch_lane.py); false: one step per LLM-lane
    # call, as before (the unbatched baseline of `bench serve`).
    batch: bool = True
    seed: int | None = None
    # Where replies come from: "local" (this process's speculative engine) or "openai" (an OpenAI-compatible
    # server: vLLM, SGLang, llama.cpp's server, another specvoice; see docs/scaling.md).
    backend: str = "local"
    base_url: str = ""  # openai backend: e.g. http://llm-host:8000/v1
    model: str = ""  # openai backend: the served model's name
    api_key: str | None = None  # openai backend: set it as SPECVOICE_LLM_API_KEY rather than in a file
    api_key_file: str = ""  # openai backend: or a file that holds the key
    timeout_s: float = 10.0  # openai backend: connect, and the longest wait between two streamed chunks
    max_retries: int = 2  # openai backend: retries of a failed request (with backoff)


@dataclass
class TTSConfig:
    length_scale: float = 1.0  # >1 speaks slower
    speaker: int | None = None


@dataclass
class ConversationConfig:
    """Turn-taking knobs. Documented in docs/conversation.md ('Settings')."""

    vad_threshold: float = 0.5
    # End of turn: "semantic" fuses Smart Turn (audio) and the LLM's P(end of turn) (text) into the wait
    # (asr/endpointing.py: ~150 ms when both say finished, up to max_silence_ms when not); "fixed" is a
    # plain silence timer of hangover_ms.
    endpointing: str = "semantic"
    hangover_ms: int = 500  # the fixed timer; in semantic mode, the wait when a signal is late or missing
    max_silence_ms: int = 2000  # cap on every wait (Realtime server_vad silence_duration_ms sets it)
    eagerness: str = "auto"  # low | medium | high | auto: how readily "finished" is believed (docs)
    min_speech_ms: int = 200
    barge_in: bool = True
    echo_policy: str = "half_duplex"  # half_duplex | full_duplex (headset)
    output_sample_rate: int = 22050
    turn_detection: str | None = "server_vad"  # server_vad | semantic_vad | None (manual commit)
    auto_respond: bool = True
    preemptive: bool = True  # start the reply at the first silence; play it only if the turn ends
    preemptive_silence_ms: int = 64  # silence before the end-of-turn signals and the preemptive reply start
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
    api_port: int | None = None  # OpenAI-compatible HTTP API (/v1/chat/completions): None = port + 1, 0 = off
    token: str | None = None
    max_sessions: int = 8
    max_message_bytes: int = 1 << 20
    max_queued_audio_s: float = 30.0
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names besides loopback ones (DNS rebinding)
    max_sessions_per_client: int = 4  # per client IP address (a local reverse proxy is one address)
    max_pending: int = 16  # connections without a conversation yet (a phone stream before `start`)
    max_text_chars: int = 4000  # one user text message
    max_audio_speed: float = 2.0  # input audio beyond this x real time (after a burst) is throttled
    audio_burst_s: float = 10.0  # how far ahead of real time a client may send audio before throttling
    idle_timeout_s: float = 60.0  # no message from the client and nothing to send for this long: close
    start_timeout_s: float = 10.0  # a phone stream must send `start` within this after connecting
    send_timeout_s: float = 10.0  # a client that does not read for this long is disconnected
    ping_interval_s: float = 20.0  # keepalive ping; no pong within send_timeout_s: disconnected
    max_errors: int = 200  # bad messages one connection may send before it is closed (1008)
    # Shared ASR/TTS lanes across sessions: a turn-ending decode before partial ones, a reply's first piece
    # before other replies' later pieces (docs/scaling.md); false: first come, first served (comparisons).
    lane_priority: bool = True
    # Concurrent sessions' short Whisper final decodes as one batched encode + generate (app/media_lanes.py
    # AsrLane). Off: on the 2-core box a batch of 4 finished later at p50 than one by one (1461 vs 929 ms,
    # bench/lanes.py); the lane priorities above are the win there.
    asr_batch: bool = False


@dataclass
class SkillsConfig:
    """Built-in skills (docs/tools.md); off by default."""

    events: bool = False  # the event-planning skill's tools, on every conversation of the assistant
    events_db: str = ""  # its SQLite file; "" = $XDG_DATA_HOME/specvoice/events.db
    orders: bool = False  # the order-lookup example tool (docs/support-bot.md), on every conversation
    orders_db: str = ""  # its SQLite file (sample rows on first use); "" = $XDG_DATA_HOME/specvoice/orders.db
    call_center: bool = False  # Twilio calls get transfer_call / end_call (app/server/twilio.py)


@dataclass
class Config:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    skills: SkillsConfig = field(default_factory=SkillsConfig)

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
