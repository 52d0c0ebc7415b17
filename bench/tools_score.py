"""Scoring for `specvoice bench tools`: the command sets, argument checks, threshold calibration, summaries.

Kept apart from the runner (bench/tools.py) so the checks can be read and unit-tested without models.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.voice_report import spread

COMMANDS_FILE = Path(__file__).resolve().parent / "data" / "tool_commands.json"

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}  # fmt: skip
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
             "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
             "fifteenth": 15, "eighteenth": 18, "twentieth": 20, "thirtieth": 30, "fortieth": 40,
             "fiftieth": 50, "sixtieth": 60, "seventieth": 70, "eightieth": 80, "ninetieth": 90,
             "hundredth": 100}  # fmt: skip
NUMBER_WORDS: dict[str, int] = {w: i for i, w in enumerate(_UNITS)} | _TENS | {"hundred": 100}


@dataclass(frozen=True)
class Command:
    split: str
    index: int
    scenario: str
    text: str
    tool: str | None  # None: the right reply answers without a call
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.split}-{self.index:02d}"


def load_commands(path: Path = COMMANDS_FILE) -> tuple[dict[str, str], dict[str, list[Command]]]:
    """(scenario system prompts, {"dev": [...], "test": [...]})."""
    data = json.loads(Path(path).read_text())
    splits = {
        split: [
            Command(split, i, c["scenario"], c["text"], c.get("tool"), c.get("args") or {})
            for i, c in enumerate(data[split])
        ]  # fmt: skip
        for split in ("dev", "test")
    }
    return data["scenarios"], splits


def normalise(text: str) -> str:
    """Lower case, no punctuation or possessive 's, number words (and ordinals) as digits, one space."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)  # 4,172 -> 4172
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"[^a-z0-9 ]+", " ", text.replace("-", " "))
    words = text.split()
    out: list[str] = []
    for word in words:
        value = NUMBER_WORDS.get(word, _ORDINALS.get(word))
        if value is not None and out and out[-1].isdigit() and int(out[-1]) in _TENS.values() and value < 10:
            out[-1] = str(int(out[-1]) + value)  # twenty five -> 25
        elif value is not None:
            out.append(str(value))
        else:
            out.append(re.sub(r"^(\d+)(st|nd|rd|th)$", r"\1", word))
    return " ".join(out)


def as_integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = normalise(value).replace(" ", "")
        return int(text) if text.isdigit() else None
    return None


def check_argument(expected: Any, actual: Any) -> bool:
    """One argument against its check (see the `about` of tool_commands.json)."""
    if isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, int):
        return as_integer(actual) == expected
    if actual is None:
        return False
    if isinstance(expected, str):
        return normalise(str(actual)) == normalise(expected)
    if isinstance(expected, dict) and "hour" in expected:
        from app.skills.events_db import EventsError, parse_hour

        if isinstance(actual, int) and not isinstance(actual, bool):
            return actual == expected["hour"]
        try:
            return parse_hour(str(actual)) == expected["hour"]
        except EventsError:
            return False
    if isinstance(expected, dict) and "any" in expected:
        text = f" {normalise(str(actual))} "
        return any(normalise(w) in text for w in expected["any"])
    if isinstance(expected, dict) and expected.get("nonempty"):
        return bool(normalise(str(actual)))
    raise ValueError(f"unknown argument check {expected!r}")


def failed_arguments(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    return [name for name, check in expected.items() if not check_argument(check, actual.get(name))]


def calibrate_threshold(p_calls: list[float], should_call: list[bool]) -> float:
    """The P(call) threshold with the best decision accuracy (in the middle, in log space, of the best gap).

    Used on the dev set only; the test set is then scored with it."""
    if not p_calls:
        return 0.5
    points = sorted(set(p_calls))
    candidates = [points[0] / 2] + [
        math.sqrt(a * b) if a > 0 else b / 2 for a, b in zip(points, points[1:], strict=False)
    ]
    candidates.append(min(1.0, points[-1] * 1.5 + 1e-9))

    def accuracy(threshold: float) -> int:
        return sum((p >= threshold) == s for p, s in zip(p_calls, should_call, strict=True))

    best = max(accuracy(t) for t in candidates)
    winners = [t for t in candidates if accuracy(t) == best]
    return winners[len(winners) // 2]


def summarize(trials: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Accuracy (decision at `threshold`, tool, arguments, end to end) and timing spreads of one run."""
    commands = [t for t in trials if t["expected_tool"] is not None]
    decided = [(t["p_call"] >= threshold) == (t["expected_tool"] is not None) for t in trials]
    argmax = [t["argmax_call"] == (t["expected_tool"] is not None) for t in trials]
    for t, ok in zip(trials, decided, strict=True):
        called = t["p_call"] >= threshold
        t["decision_ok"] = ok
        t["correct"] = ok and (not called or (t["tool_ok"] and t["args_ok"]))
    forced = [t["tool_ok"] and t["args_ok"] for t in commands]
    timings: dict[str, Any] = {}
    for key in ("asr_ms", "decision_ms", "tool_call_ms", "tool_result_ms", "first_answer_token_ms",
                "first_audio_ms"):  # fmt: skip
        values = [t["timings_ms"][key] for t in commands if key in t.get("timings_ms", {})]
        if values:
            timings[key] = spread(values)

    def share(flags: list[bool]) -> dict[str, Any]:
        return {
            "n": len(flags),
            "correct": sum(flags),
            "rate": round(sum(flags) / len(flags), 3) if flags else None,
        }

    return {
        "threshold": threshold,
        "end_to_end": share([t["correct"] for t in trials]),
        "decision": share(decided),
        "decision_argmax": share(argmax),
        "tool_forced": share([t["tool_ok"] for t in commands]),
        "arguments_forced": share([t["args_ok"] for t in commands if t["tool_ok"]]),
        "tool_and_arguments_forced": share(forced),
        # calls that set an optional argument the user never gave (not part of "correct": a diagnostic)
        "invented_values": share([bool(t.get("invented")) for t in commands if t["tool_ok"]]),
        "timings_ms": timings,
    }
