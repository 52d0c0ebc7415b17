"""Realtime session settings: parse `session.update` (GA and beta shapes) and build the wire objects.

Kept apart from the endpoint so the schema can be tested without a connection or a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from app.config import Config
from app.server.session import ProtocolError

PCM_RATE = 24000
G711_RATE = 8000
# GA format type / beta format name -> our codec name
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "g711_ulaw", "g711_alaw": "g711_alaw"}
CODEC_TO_GA = {v: k for k, v in GA_FORMATS.items()}
EAGERNESS = ("low", "medium", "high", "auto")
MAX_SILENCE_MS = 60_000
MAX_TOOLS = 32
MAX_TOOL_DESCRIPTION = 1024
MAX_TOOL_SCHEMA_CHARS = 16_000


@dataclass(frozen=True)
class SessionSettings:
    input_codec: str = "pcm16"
    input_rate: int = PCM_RATE
    output_codec: str = "pcm16"
    output_rate: int = PCM_RATE
    turn_detection: dict[str, Any] | None = dataclasses.field(default_factory=lambda: {"type": "server_vad"})
    instructions: str = ""
    voice: str = "joe"
    output_modalities: tuple[str, ...] = ("audio",)
    tools: tuple[dict[str, Any], ...] = ()  # function tools as the client sent them (checked)
    tool_choice: Any = "auto"  # "auto" | "none" | "required" | {"type": "function", "name": N}

    @property
    def text_only(self) -> bool:
        return "audio" not in self.output_modalities

    @classmethod
    def from_config(cls, config: Config) -> SessionSettings:
        mode = config.conversation.turn_detection
        return cls(turn_detection={"type": mode} if mode else None, instructions=config.llm.system_prompt)

    def conversation_changes(self) -> dict[str, Any]:
        """The ConversationConfig fields this session shapes (turn taking; audio rates are adapted here).

        server_vad: `silence_duration_ms` caps every end-of-turn wait (`max_silence_ms`), so 200 ends a
        finished sentence after at most 200 ms of silence, and an unfinished one too; `threshold` is the
        VAD's. semantic_vad: `eagerness` picks the thresholds of the fused rule (asr/endpointing.py).
        null: manual commit."""
        td = self.turn_detection
        if td is None:
            return {"turn_detection": None, "auto_respond": False}
        changes: dict[str, Any] = {
            "turn_detection": td["type"],
            "auto_respond": bool(td.get("create_response", True)),
            "barge_in": bool(td.get("interrupt_response", True)),
        }
        if td["type"] == "server_vad":
            if td.get("threshold") is not None:
                changes["vad_threshold"] = float(td["threshold"])
            if td.get("silence_duration_ms") is not None:
                changes["max_silence_ms"] = max(1, int(td["silence_duration_ms"]))
        else:
            changes["eagerness"] = td.get("eagerness") or "auto"
        return changes


def _codec_and_rate(fmt: Any, where: str) -> tuple[str, int]:
    if isinstance(fmt, str):  # beta: "pcm16" | "g711_ulaw" | "g711_alaw"
        codec = BETA_FORMATS.get(fmt)
        if codec is None:
            raise ProtocolError(
                f"unsupported audio format {fmt[:40]!r}; use pcm16, g711_ulaw or g711_alaw", "invalid_value", where
            )
        return codec, PCM_RATE if codec == "pcm16" else G711_RATE
    if isinstance(fmt, dict):  # GA: {"type": "audio/pcm", "rate": 24000}
        kind = fmt.get("type")
        codec = GA_FORMATS.get(kind) if isinstance(kind, str) else None
        if codec is None:
            raise ProtocolError(
                f"unsupported audio format {str(kind)[:40]!r}; use audio/pcm, audio/pcmu or audio/pcma",
                "invalid_value",
                where,
            )
        if codec != "pcm16":
            return codec, G711_RATE
        rate = fmt.get("rate", PCM_RATE)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            raise ProtocolError(
                f"pcm rate must be an integer between 8000 and 48000, got {rate!r}",
                "invalid_value",
                f"{where}.rate",
            )
        return codec, rate
    raise ProtocolError("audio format must be a string or an object with a `type`", "invalid_value", where)


def _turn_detection(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
        raise ProtocolError(
            "turn_detection must be null or {type: server_vad | semantic_vad, ...}", "invalid_value", where
        )
    td = {"type": value.get("type", "server_vad")}
    for key in (
        "threshold",
        "silence_duration_ms",
        "prefix_padding_ms",
        "create_response",
        "interrupt_response",
        "eagerness",
        "idle_timeout_ms",
    ):
        if key in value:
            td[key] = value[key]
    for key in ("threshold", "silence_duration_ms", "prefix_padding_ms"):
        if (
            key in td
            and td[key] is not None
            and (not isinstance(td[key], (int, float)) or isinstance(td[key], bool) or td[key] < 0)
        ):
            raise ProtocolError(
                f"turn_detection.{key} must be a non-negative number", "invalid_value", f"{where}.{key}"
            )
    if (td.get("silence_duration_ms") or 0) > MAX_SILENCE_MS:
        raise ProtocolError(f"turn_detection.silence_duration_ms must be at most {MAX_SILENCE_MS}",
                            "invalid_value", f"{where}.silence_duration_ms")  # fmt: skip
    if td.get("eagerness") is not None and td["eagerness"] not in EAGERNESS:
        raise ProtocolError(f"turn_detection.eagerness must be one of {', '.join(EAGERNESS)}",
                            "invalid_value", f"{where}.eagerness")  # fmt: skip
    return td


# turn_detection values: (low, high) for numbers; booleans; idle_timeout_ms may also be null
TD_NUMBER_BOUNDS = {
    "threshold": (0.0, 1.0),
    "silence_duration_ms": (0.0, 60_000.0),
    "prefix_padding_ms": (0.0, 10_000.0),
    "idle_timeout_ms": (1000.0, 3_600_000.0),
}
TD_BOOLEANS = ("create_response", "interrupt_response")


def _check_turn_detection_values(td: dict[str, Any] | None, where: str) -> None:
    """Types and ranges of every turn_detection value, so nothing absurd (1e308, NaN, a list) gets further."""
    if td is None:
        return
    for key, (low, high) in TD_NUMBER_BOUNDS.items():
        value = td.get(key)
        if value is None:
            continue
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
            or (key == "threshold" and value in (0, 1))
        ):
            shape = "strictly between 0 and 1" if key == "threshold" else f"between {low:g} and {high:g}"
            raise ProtocolError(f"turn_detection.{key} must be a number {shape}", "invalid_value", f"{where}.{key}")
    for key in TD_BOOLEANS:
        if td.get(key) is not None and not isinstance(td[key], bool):
            raise ProtocolError(f"turn_detection.{key} must be true or false", "invalid_value", f"{where}.{key}")
    if td.get("eagerness") is not None and not isinstance(td["eagerness"], str):
        raise ProtocolError("turn_detection.eagerness must be a string", "invalid_value", f"{where}.eagerness")


def parse_tools(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    """`tools`: a list of {type: "function", name, description, parameters}; each schema must be one the
    constrained decoder supports (checked here, so a bad tool is refused now, not mid-reply)."""
    from app.tools import ToolError, ToolRegistry

    if not isinstance(value, list):
        raise ProtocolError("tools must be a list of function tools", "invalid_value", where)
    if len(value) > MAX_TOOLS:
        raise ProtocolError(f"at most {MAX_TOOLS} tools", "invalid_value", where)
    tools: list[dict[str, Any]] = []
    check = ToolRegistry()
    for i, tool in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ProtocolError("only tools of type function are supported", "invalid_value", f"{at}.type")
        name, description = tool.get("name"), tool.get("description") or ""
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(name, str) or not isinstance(description, str):
            raise ProtocolError("a tool needs a string name (and description)", "invalid_value", f"{at}.name")
        if len(description) > MAX_TOOL_DESCRIPTION:
            raise ProtocolError(f"tool descriptions are at most {MAX_TOOL_DESCRIPTION} characters",
                                "invalid_value", f"{at}.description")  # fmt: skip
        if len(json.dumps(parameters, default=str)) > MAX_TOOL_SCHEMA_CHARS:
            raise ProtocolError(f"tool parameters are at most {MAX_TOOL_SCHEMA_CHARS} characters of JSON",
                                "invalid_value", f"{at}.parameters")  # fmt: skip
        try:
            check.declare(name, description, parameters)
        except ToolError as exc:
            raise ProtocolError(str(exc), "invalid_value", at) from None
        tools.append({"type": "function", "name": name, "description": description, "parameters": parameters})
    return tuple(tools)


def parse_tool_choice(value: Any, tools: tuple[dict[str, Any], ...], where: str) -> Any:
    """`tool_choice`: auto / none / required / {type: function, name} naming one of `tools`."""
    from app.tool_turn import ToolChoice

    try:
        choice = ToolChoice.parse(value)
    except ValueError as exc:
        raise ProtocolError(str(exc), "invalid_value", where) from None
    if choice.mode == "function" and choice.name not in {t["name"] for t in tools}:
        raise ProtocolError(f"tool_choice names {choice.name!r}, which is not among the tools",
                            "invalid_value", where)  # fmt: skip
    return choice.wire()


def tools_registry(tools: tuple[dict[str, Any], ...]):
    """The client's function tools as a registry of client-side tools (the client runs them)."""
    from app.tools import ToolRegistry

    registry = ToolRegistry()
    for tool in tools:
        registry.declare(tool["name"], tool["description"], tool["parameters"])
    return registry


def parse_instructions(value: Any, max_chars: int, param: str) -> str | None:
    """`instructions` of a session.update or a response.create: a bounded string, or None (absent)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{param} must be a string", "invalid_value", param)
    if len(value) > max_chars:
        raise ProtocolError(f"instructions of {len(value)} characters exceed the {max_chars}-character limit",
                            "instructions_too_long", param)  # fmt: skip
    return value


def parse_session_update(
    current: SessionSettings, session: dict[str, Any], max_instructions: int = 16_000
) -> SessionSettings:
    """Apply a GA (`session.audio.input.format`...) or beta (`input_audio_format`...) update; unknown
    fields are ignored, as the Realtime API does for forward compatibility. Everything is checked before
    anything is returned, so a refused update changes nothing."""
    changes: dict[str, Any] = {}
    audio = session.get("audio")
    if audio is not None and not isinstance(audio, dict):
        raise ProtocolError("session.audio must be an object", "invalid_value", "session.audio")
    audio_in = (audio or {}).get("input") or {}
    audio_out = (audio or {}).get("output") or {}
    if not isinstance(audio_in, dict) or not isinstance(audio_out, dict):
        raise ProtocolError("session.audio.input/output must be objects", "invalid_value", "session.audio")
    for side, block in (("input", audio_in), ("output", audio_out)):
        # GA shape (session.audio.<side>.format) first, then the beta one (session.<side>_audio_format)
        if "format" in block:
            fmt, where = block["format"], f"session.audio.{side}.format"
        elif f"{side}_audio_format" in session:
            fmt, where = session[f"{side}_audio_format"], f"session.{side}_audio_format"
        else:
            continue
        changes[f"{side}_codec"], changes[f"{side}_rate"] = _codec_and_rate(fmt, where)
    if "turn_detection" in audio_in:
        where = "session.audio.input.turn_detection"
        changes["turn_detection"] = _turn_detection(audio_in["turn_detection"], where)
        _check_turn_detection_values(changes["turn_detection"], where)
    elif "turn_detection" in session:
        changes["turn_detection"] = _turn_detection(session["turn_detection"], "session.turn_detection")
        _check_turn_detection_values(changes["turn_detection"], "session.turn_detection")
    instructions = parse_instructions(session.get("instructions"), max_instructions, "session.instructions")
    if instructions is not None:
        changes["instructions"] = instructions
    voice = audio_out.get("voice", session.get("voice"))
    if isinstance(voice, str):
        if len(voice) > 64:
            raise ProtocolError("voice names are at most 64 characters", "invalid_value", "session.voice")
        changes["voice"] = voice
    modalities = parse_modalities(session.get("output_modalities", session.get("modalities")))
    if modalities is not None:
        changes["output_modalities"] = modalities
    if "tools" in session:
        changes["tools"] = parse_tools(session["tools"], "session.tools")
    tools = changes.get("tools", current.tools)
    if "tool_choice" in session:
        changes["tool_choice"] = parse_tool_choice(session["tool_choice"], tools, "session.tool_choice")
    elif isinstance(current.tool_choice, dict) and current.tool_choice["name"] not in {t["name"] for t in tools}:
        changes["tool_choice"] = "auto"  # the named tool is gone
    return dataclasses.replace(current, **changes)


def parse_modalities(value: Any) -> tuple[str, ...] | None:
    """["audio"] or ["text"] (GA); the beta ["text", "audio"] means audio (which always has a transcript)."""
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        kept = tuple(m for m in value if m in ("audio", "text"))
        return ("audio",) if "audio" in kept or not kept else ("text",)
    return None


def _format_object(codec: str, rate: int) -> dict[str, Any]:
    fmt: dict[str, Any] = {"type": CODEC_TO_GA[codec]}
    if codec == "pcm16":
        fmt["rate"] = rate
    return fmt


def session_object(session_id: str, settings: SessionSettings, config: Config) -> dict[str, Any]:
    """The GA `session` object for session.created / session.updated."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": "specvoice",
        "output_modalities": list(settings.output_modalities),
        "instructions": settings.instructions,
        "audio": {
            "input": {
                "format": _format_object(settings.input_codec, settings.input_rate),
                "turn_detection": settings.turn_detection,
                "transcription": {"model": "whisper"},
                "noise_reduction": None,
            },
            "output": {
                "format": _format_object(settings.output_codec, settings.output_rate),
                "voice": settings.voice,
                "speed": 1.0,
            },
        },
        "tools": [dict(t) for t in settings.tools],
        "tool_choice": settings.tool_choice,
        "max_output_tokens": config.llm.max_reply_tokens,
    }


def assistant_item(item_id: str, status: str, transcript: str, text_only: bool = False) -> dict[str, Any]:
    content = {"type": "output_text", "text": transcript} if text_only else {
        "type": "output_audio", "transcript": transcript}  # fmt: skip
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [content],
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def function_call_output_item(item_id: str, call_id: str, output: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": call_id,
        "output": output,
    }


def response_object(
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    settings: SessionSettings,
    status_details: dict[str, Any] | None = None,
    text_only: bool | None = None,
) -> dict[str, Any]:
    text_only = settings.text_only if text_only is None else text_only
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": "conv_default",
        "output_modalities": ["text"] if text_only else ["audio"],
        "audio": {
            "output": {
                "format": _format_object(settings.output_codec, settings.output_rate),
                "voice": settings.voice,
            }
        },
        "usage": None,
        "metadata": None,
    }
