"""`specvoice bench voice`, its numbers: per-configuration summary, the latency vs false-endpoint curve, the
table and the plots (bench/voice.py measures; this module only counts and draws): an SVG always (no
dependency), a PNG when matplotlib is installed (the `bench` extra)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.voice_runs import Outcome

MID_PAUSE = (600, 1000)  # the pauses the false-endpoint goal is about
# The path to the first sound, stage by stage, in ms after the end of speech (app/reply_stream.py
# `Reply.stage_timings`): silence work started (VAD), transcript known, first LLM token, first spoken piece's
# text, that piece synthesised, endpoint, first audio released.
STAGES = [
    ("silence", "eos_to_silence_ms"),
    ("transcript", "eos_to_transcript_ms"),
    ("first token", "eos_to_first_token_ms"),
    ("first piece", "eos_to_first_piece_ms"),
    ("piece audio", "eos_to_first_piece_audio_ms"),
    ("endpoint", "eos_to_endpoint_ms"),
    ("first audio", "eos_to_first_audio_ms"),
]


# -- summarising -------------------------------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}  # fmt: skip


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after lower-casing and dropping punctuation."""
    ref = re.sub(r"[^\w' ]", " ", reference.lower()).split()
    hyp = re.sub(r"[^\w' ]", " ", hypothesis.lower()).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = [word_errors(ref, hyp) for ref, hyp in pairs]
    return round(sum(e for e, _ in errors) / max(1, sum(n for _, n in errors)), 4)


def summarize(outcomes: list[Outcome], questions: list, settings: dict[str, Any]) -> dict[str, Any]:
    pairs = list(zip(questions, outcomes, strict=True))
    paused = [o for q, o in pairs if q.paused]
    mid = [o for q, o in pairs if q.paused and MID_PAUSE[0] <= q.pause_ms <= MID_PAUSE[1]]
    wasted = [o for o in outcomes if o.wasted_preemptive is not None]
    stage_names = sorted({k for o in outcomes for k in o.stages})
    effective = [o.effective for o in outcomes if o.effective]
    return {
        "available": True,
        "settings": settings,
        "effective_settings": effective[0] if effective else None,
        "eos_to_audio_ms": spread([o.eos_to_audio_ms for o in outcomes if o.eos_to_audio_ms is not None]),
        "endpoint_to_audio_ms": spread(
            [o.endpoint_to_audio_ms for o in outcomes if o.endpoint_to_audio_ms is not None]
        ),
        "eos_to_endpoint_ms": spread(
            [o.eos_to_endpoint_ms for o in outcomes if getattr(o, "eos_to_endpoint_ms", None) is not None]
        ),
        "false_endpoints": {
            "paused": sum(o.false_endpoints > 0 for o in paused),
            "paused_questions": len(paused),
            "pause_600_1000": sum(o.false_endpoints > 0 for o in mid),
            "pause_600_1000_questions": len(mid),
            "plain": sum(o.false_endpoints > 0 for q, o in pairs if not q.paused),
            "plain_questions": len(pairs) - len(paused),
            "total_endpoints_too_early": sum(o.false_endpoints for o in outcomes),
        },
        "fragment_replies_heard": sum(o.fragment_heard for o in outcomes),
        "endpoint_reasons": _count(
            e.get("reason", "?") for o in outcomes for e in getattr(o, "endpoints", [])
        ),
        "wasted_preemptive": {
            "count": sum(o.wasted_preemptive for o in wasted) if wasted else None,
            "ms": round(sum(o.wasted_preemptive_ms or 0.0 for o in wasted), 1) if wasted else None,
            "tokens": sum(o.wasted_preemptive_tokens or 0 for o in wasted) if wasted else None,
            "reported_for": len(wasted),
        },
        "wer": wer([(q.text, o.transcript) for q, o in pairs]),
        "answered": sum(o.eos_to_audio_ms is not None for o in outcomes),
        "questions": len(outcomes),
        "stages_p50_ms": {
            k: spread([o.stages[k] for o in outcomes if k in o.stages])["p50"] for k in stage_names
        },
        "stages_ms": {
            key: spread([o.stages[key] for o in outcomes if key in o.stages])
            for _, key in STAGES
            if any(key in o.stages for o in outcomes)
        },
        "preemptive_ready_before_endpoint": _ready_before_endpoint(outcomes),
        "per_question": [
            {"text": q.text, "voice": q.voice, "pause_ms": q.pause_ms, **dataclasses.asdict(o)}
            for q, o in pairs
        ],
    }


def _ready_before_endpoint(outcomes: list[Outcome]) -> dict[str, int]:
    """Turns whose heard reply was preemptive, and how many of them had their first audio synthesised by the
    endpoint (so the endpoint alone set the wait)."""
    pre = [o.stages for o in outcomes if o.stages.get("preemptive") == 1.0]
    ready = [
        s for s in pre
        if "eos_to_first_piece_audio_ms" in s and "eos_to_endpoint_ms" in s
        and s["eos_to_first_piece_audio_ms"] <= s["eos_to_endpoint_ms"]
    ]  # fmt: skip
    return {"preemptive_replies": len(pre), "ready": len(ready)}


def _count(names) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def curve(configs: dict[str, Any]) -> list[dict[str, Any]]:
    """Latency vs false endpoints: one point per available configuration."""
    points = []
    for name, r in configs.items():
        if not r.get("available") or r["eos_to_audio_ms"]["p50"] is None:
            continue
        fe = r["false_endpoints"]
        points.append({
            "config": name,
            "eos_to_audio_p50_ms": r["eos_to_audio_ms"]["p50"],
            "eos_to_audio_p95_ms": r["eos_to_audio_ms"]["p95"],
            "false_endpoint_rate_paused": round(fe["paused"] / fe["paused_questions"], 3) if fe["paused_questions"] else None,
        })  # fmt: skip
    return points


COLUMNS = [
    "eos->audio p50/p95 (min-max)",
    "eos->endpt p50/p95",
    "endpt->audio p50/p95",
    "false endpt paused",
    "600-1000",
    "frag heard",
    "wasted (n / LLM ms)",
    "WER",
    "answered",
]
WIDTHS = [32, 20, 22, 20, 10, 11, 21, 7, 10]


# -- output ------------------------------------------------------------------------------------------------------
def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'config':15s}" + "".join(f"{c:>{n}s}" for c, n in zip(COLUMNS, WIDTHS, strict=True)))
    for name, r in report["configs"].items():
        if not r.get("available"):
            print(f"{name:15s}  unavailable: {r['reason']}")
            continue
        e, p, fe, w = (
            r["eos_to_audio_ms"],
            r["endpoint_to_audio_ms"],
            r["false_endpoints"],
            r["wasted_preemptive"],
        )
        w8 = r.get("eos_to_endpoint_ms") or {"p50": None, "p95": None}
        cells = [
            f"{e['p50']}/{e['p95']} ({e['min']}-{e['max']})",
            f"{w8['p50']}/{w8['p95']}",
            f"{p['p50']}/{p['p95']}",
            f"{fe['paused']}/{fe['paused_questions']}",
            f"{fe['pause_600_1000']}/{fe['pause_600_1000_questions']}",
            str(r["fragment_replies_heard"]),
            f"{w['count']} / {w['ms']:.0f}ms" if w["count"] is not None else "n/a",
            f"{r['wer']:.3f}",
            f"{r['answered']}/{r['questions']}",
        ]
        print(f"{name:15s}" + "".join(f"{c:>{n}s}" for c, n in zip(cells, WIDTHS, strict=True)))
    print_stages(report)
    s = report["settings"]
    print(f"\n{s['questions']} questions ({s['paused_questions']} paused, {s['pause_ms']['min']}-{s['pause_ms']['max']} ms),"
          f" voices {', '.join(s['voices'])}; transport {s['transport']}; times in ms")  # fmt: skip
    print(f"load average (1/5/15 min) at start {report['load_average']['start']}, at end {report['load_average']['end']}"
          f" on {os.cpu_count()} cores")  # fmt: skip


def print_stages(report: dict[str, Any]) -> None:
    """The path to the first sound, stage by stage: p50 / p95 ms after the end of speech (streaming configs)."""
    rows = [(n, r) for n, r in report["configs"].items() if r.get("available") and r.get("stages_ms")]
    if not rows:
        return
    print(f"\n{'stages (ms after end of speech, p50/p95)':42s}" + "".join(f"{label:>14s}" for label, _ in STAGES)
          + f"{'ready by endpt':>16s}")  # fmt: skip
    for name, r in rows:
        cells = []
        for _, key in STAGES:
            st = r["stages_ms"].get(key)
            cells.append(f"{st['p50']:.0f}/{st['p95']:.0f}" if st and st["p50"] is not None else "-")
        ready = r.get("preemptive_ready_before_endpoint") or {}
        done = f"{ready.get('ready', 0)}/{ready.get('preemptive_replies', 0)}"
        print(f"{name:42s}" + "".join(f"{c:>14s}" for c in cells) + f"{done:>16s}")


def write_svg(points: list[dict[str, Any]], path: Path) -> None:
    """The latency vs false-endpoint curve as a small self-contained SVG (no plotting dependency)."""
    width, height, m = 560, 380, 60
    xs = [p["eos_to_audio_p50_ms"] for p in points] or [0.0]
    ys = [100 * (p["false_endpoint_rate_paused"] or 0.0) for p in points] or [0.0]
    x_max = 500.0 * math.ceil(max(500.0, 1.1 * max(xs)) / 500)  # round ticks
    y_max = min(100.0, 20.0 * math.ceil(max(10.0, 1.1 * max(ys)) / 20))

    def sx(v: float) -> float:
        return m + (width - 1.5 * m) * v / x_max

    def sy(v: float) -> float:
        return height - m - (height - 1.7 * m) * v / y_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<line x1="{m}" y1="{height - m}" x2="{width - m / 2}" y2="{height - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{height - m}" x2="{m}" y2="{m * 0.7}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 18}" text-anchor="middle">end of speech -> first audio, p50 (ms)</text>',
           f'<text x="16" y="{height / 2}" transform="rotate(-90 16 {height / 2})" text-anchor="middle">false endpoints on paused questions (%)</text>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="13">bench voice: latency vs false endpoints</text>']  # fmt: skip
    for k in range(5):
        xv, yv = x_max * k / 4, y_max * k / 4
        out.append(f'<text x="{sx(xv):.0f}" y="{height - m + 16}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{m - 6}" y="{sy(yv) + 4:.0f}" text-anchor="end">{yv:.0f}</text>')
    fixed = sorted(
        (p for p in points if p["config"].startswith("fixed_")), key=lambda p: int(p["config"].split("_")[1])
    )
    if len(fixed) > 1:
        line = " ".join(
            f"{sx(p['eos_to_audio_p50_ms']):.1f},{sy(100 * (p['false_endpoint_rate_paused'] or 0)):.1f}"
            for p in fixed
        )
        out.append(f'<polyline points="{line}" fill="none" stroke="#888" stroke-dasharray="4 3"/>')
    for p, x, y in zip(points, xs, ys, strict=True):
        color = _color(p["config"])
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{color}"/>')
        out.append(f'<text x="{sx(x) + 6:.1f}" y="{sy(y) - 6:.1f}">{p["config"]}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _color(config: str) -> str:
    """Ours red, the sequential baseline blue, the ablations grey."""
    return "#c00" if config in ("semantic", "default") else "#06c" if config == "baseline" else "#444"


def write_png(points: list[dict[str, Any]], path: Path) -> bool:
    """The same curve as a PNG with matplotlib (the optional `bench` extra); False when it is missing.

    Each configuration is a point at (p50, false-endpoint share on paused questions) with a bar to its
    p95, so the spread shows; the fixed timers are joined by a dashed line (the trade-off a timer offers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    fixed = sorted(
        (p for p in points if p["config"].startswith("fixed_")), key=lambda p: int(p["config"].split("_")[1])
    )
    if len(fixed) > 1:
        ax.plot([p["eos_to_audio_p50_ms"] for p in fixed],
                [100 * (p["false_endpoint_rate_paused"] or 0) for p in fixed], "--", color="#888", lw=1)  # fmt: skip
    for p in points:
        x, y = p["eos_to_audio_p50_ms"], 100 * (p["false_endpoint_rate_paused"] or 0)
        color = _color(p["config"])
        if p.get("eos_to_audio_p95_ms") is not None:
            ax.plot([x, p["eos_to_audio_p95_ms"]], [y, y], "-", color=color, alpha=0.35, lw=3)
        ax.plot([x], [y], "o", color=color)
        ax.annotate(p["config"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("end of speech -> first reply audio, p50 (bar to p95), ms")
    ax.set_ylabel("false endpoints on paused questions (%)")
    ax.set_title("bench voice: latency vs false endpoints")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=-2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
