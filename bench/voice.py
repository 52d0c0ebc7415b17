"""`specvoice bench voice`: how long the user waits after they stop talking, and how often they are cut off.

Questions (bench/data/voice_questions.txt; >= 30, >= 15 with a mid-sentence pause of 300-1200 ms) are
spoken by espeak-ng and flite voices, never the assistant's own Piper voice, over room tone (and, with
`--snr`, noise), and streamed in real time in 20 ms frames. Every configuration hears the same clips in
the same run:

* `semantic`: the fused end-of-turn rule (ConversationConfig(endpointing="semantic"));
* `no_preemption`: the same without the reply prepared during the silence;
* `fixed_300` ... `fixed_800`: a plain silence timer of that many ms;
* `baseline`: the best sequential pipeline, `specvoice reply`'s streamed path with the short-window
  decoder after a fixed silence timer (`--baseline-hangover-ms`).

`--transport direct` drives the Conversation API; `--transport realtime` starts `specvoice serve`'s server
in-process on a free loopback port and talks to it over /v1/realtime as a client would (the baseline is a
pipeline, not a server, and runs the same way in both). A configuration whose settings this build of
ConversationConfig lacks is reported as unavailable. Writes JSON (`--json`), the latency vs
false-endpoint curve next to it (SVG; PNG too with matplotlib, the `bench` extra), and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bench.voice_report import curve, print_table, spread, summarize, write_png, write_svg
from bench.voice_runs import Outcome, sequential, sequential_assistant, stream_direct, stream_realtime

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},  # the assistant's conversation settings as they are
    "semantic": {"endpointing": "semantic"},
    "no_preemption": {"endpointing": "semantic", "preemptive": False},
    "fixed_300": {"endpointing": "fixed", "hangover_ms": 300},
    "fixed_450": {"endpointing": "fixed", "hangover_ms": 450},
    "fixed_600": {"endpointing": "fixed", "hangover_ms": 600},
    "fixed_800": {"endpointing": "fixed", "hangover_ms": 800},
    "baseline": {},
}
FULL_RUN = ["semantic", "no_preemption", "fixed_300", "fixed_450", "fixed_600", "fixed_800", "baseline"]
QUICK_RUN = ["default", "baseline"]
QUICK_QUESTIONS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_QUESTIONS} questions, configurations {','.join(QUICK_RUN)} (a smoke run)")  # fmt: skip
    parser.add_argument("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    parser.add_argument(
        "--questions", type=int, help="use only the first N questions (plain and paused mixed)"
    )
    parser.add_argument("--transport", choices=("direct", "realtime"), default="direct",
                        help="direct: the Conversation API; realtime: /v1/realtime of an in-process server")  # fmt: skip
    parser.add_argument("--snr", type=float, metavar="DB", help="add noise at this signal-to-noise ratio")
    parser.add_argument("--max-tokens", type=int, default=32, help="reply length cap, the same for all")
    parser.add_argument("--wait-s", type=float, default=6.0, help="give up on a reply this long after eos")
    parser.add_argument("--baseline-hangover-ms", type=int, default=500,
                        help="the sequential baseline's fixed silence timer (default 500)")  # fmt: skip
    parser.add_argument("--plot", metavar="PATH",
                        help="curve: PATH.svg, and PATH.png with matplotlib (default: next to --json)")  # fmt: skip


def conversation_config(base: Any, name: str, max_tokens: int) -> tuple[Any | None, str | None]:
    """(config, None), or (None, why not) when this ConversationConfig lacks a setting the configuration needs."""
    changes = CONFIGS[name]
    known = {f.name for f in dataclasses.fields(base)}
    missing = sorted(set(changes) - known)
    if missing:
        return None, f"ConversationConfig has no {', '.join(missing)}"
    try:
        config = dataclasses.replace(base, **changes, echo_policy="full_duplex", max_reply_tokens=max_tokens)
        from app import conversation

        validate = getattr(conversation, "_validate", None)  # the settings check Conversation() runs
        if validate is not None:
            validate(config)
    except (TypeError, ValueError) as exc:
        return None, str(exc)
    return config, None


# -- measuring -------------------------------------------------------------------------------------------------
async def run_streaming(assistant: Any, questions: list, conv_config: Any, transport: str, wait_s: float,
                        log) -> list[Outcome]:  # fmt: skip
    """Every question through one configuration; a fresh conversation (and session) per question."""
    if transport == "direct":
        return [await _logged(i, questions, stream_direct(assistant, q, conv_config, wait_s), log)
                for i, q in enumerate(questions)]  # fmt: skip
    from app.server import Server

    config = dataclasses.replace(assistant.config, conversation=conv_config,
                                 server=dataclasses.replace(assistant.config.server, host="127.0.0.1", port=0))  # fmt: skip
    config.llm = dataclasses.replace(config.llm, max_reply_tokens=conv_config.max_reply_tokens)
    async with Server(assistant, config) as server:
        return [await _logged(i, questions, stream_realtime(server, q, wait_s), log)
                for i, q in enumerate(questions)]  # fmt: skip


async def _logged(i: int, questions: list, work, log) -> Outcome:
    out = await work
    _log_line(log, i, questions, out)
    return out


def _log_line(log, i: int, questions: list, out: Outcome) -> None:
    q = questions[i]
    flags = (" FALSE-ENDPOINT" if out.false_endpoints else "") + (
        " FRAGMENT-HEARD" if out.fragment_heard else ""
    )
    pause = f" pause {q.pause_ms:.0f}" if q.paused else ""
    log(
        f"    {i + 1:2d}/{len(questions)} eos->audio {out.eos_to_audio_ms} ms{pause}{flags}  {out.transcript!r}"
    )


async def run_bench(
    assistant: Any,
    configs: list[str],
    questions: list,
    transport: str = "direct",
    max_tokens: int = 32,
    wait_s: float = 6.0,
    baseline_hangover_ms: int = 500,
    log=print,
    save=None,
) -> dict[str, Any]:
    """Every configuration over the same questions; `save(report)` is called after each (partial results)."""
    base = assistant.config.conversation
    report: dict[str, Any] = {"configs": {}, "load_average": {"start": load_average()}}
    warmed = False
    for name in configs:
        log(f"  [{name}]")
        if name == "baseline":
            seq = sequential_assistant(assistant, max_tokens)
            sequential(seq, questions[0], baseline_hangover_ms, base.vad_threshold)  # warm-up, unmeasured
            outcomes = []
            for i, q in enumerate(questions):
                outcomes.append(sequential(seq, q, baseline_hangover_ms, base.vad_threshold))
                _log_line(log, i, questions, outcomes[-1])
            report["configs"][name] = summarize(outcomes, questions, {"hangover_ms": baseline_hangover_ms})
            if save is not None:
                save(report)
            continue
        conv_config, why = conversation_config(base, name, max_tokens)
        if conv_config is None:
            log(f"    unavailable: {why}")
            report["configs"][name] = {"available": False, "reason": why}
            continue
        try:
            if not warmed:  # first calls (allocations, caches) are not what a user meets: one unmeasured
                await run_streaming(assistant, questions[:1], conv_config, "direct", wait_s, lambda *_: None)
                warmed = True
            outcomes = await run_streaming(assistant, questions, conv_config, transport, wait_s, log)
        except Exception as exc:  # one broken configuration must not cost the whole run's measurements
            log(f"    failed: {type(exc).__name__}: {exc}")
            report["configs"][name] = {"available": False, "reason": f"failed: {type(exc).__name__}: {exc}"}
            continue
        report["configs"][name] = summarize(outcomes, questions, CONFIGS[name])
        if save is not None:
            save(report)
    report["load_average"]["end"] = load_average()  # other work on the machine skews every number: say how much
    report["curve"] = curve(report["configs"])
    report["settings"] = settings(assistant, questions, transport, max_tokens, wait_s, baseline_hangover_ms)
    return report


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def settings(assistant: Any, questions: list, transport: str, max_tokens: int, wait_s: float,
             baseline_hangover_ms: int) -> dict[str, Any]:  # fmt: skip
    from bench.voice_questions import PAUSE_RANGE_MS, ROOM_TONE_DBFS

    pauses = [q.pause_ms for q in questions if q.paused]
    return {
        "transport": transport, "questions": len(questions), "paused_questions": len(pauses),
        "pause_ms": spread(pauses), "pause_range_ms": list(PAUSE_RANGE_MS), "room_tone_dbfs": ROOM_TONE_DBFS,
        "voices": sorted({q.voice for q in questions}), "max_reply_tokens": max_tokens, "wait_s": wait_s,
        "baseline_hangover_ms": baseline_hangover_ms, "chunk_ms": 20, "paced": "wall clock",
        "echo_policy": "full_duplex (clean input, as with a headset)",
    }  # fmt: skip


def run(args: argparse.Namespace, config: Any) -> int:
    from app.assistant import Assistant
    from bench.voice_questions import VoiceUnavailable, build_questions

    configs = args.configs.split(",") if args.configs else QUICK_RUN if args.quick else FULL_RUN
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(
            f"bench voice: unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}",
            file=sys.stderr,
        )
        return 2
    limit = args.questions or (QUICK_QUESTIONS if args.quick else None)
    try:
        questions = build_questions(limit=limit, snr_db=args.snr, tail_s=args.wait_s + 1.0)
    except VoiceUnavailable as exc:
        print(f"bench voice: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("app").setLevel(logging.WARNING)
    assistant = Assistant.load(config)
    print(f"bench voice: {len(questions)} questions x {len(configs)} configurations, transport {args.transport}"
          f"{f', noise at {args.snr:g} dB SNR' if args.snr is not None else ''}")  # fmt: skip

    def save_partial(partial: dict[str, Any]) -> None:  # a long run interrupted still leaves its numbers
        if args.json:
            Path(args.json).write_text(json.dumps({**partial, "partial": True}, indent=2))

    report = asyncio.run(run_bench(assistant, configs, questions, args.transport, args.max_tokens, args.wait_s,
                                   args.baseline_hangover_ms, save=save_partial))  # fmt: skip
    report["settings"]["snr_db"] = args.snr
    print_table(report)
    plot = Path(args.plot) if args.plot else Path(args.json).with_suffix(".svg") if args.json else None
    if plot is not None:
        write_svg(report["curve"], plot.with_suffix(".svg"))
        print(f"wrote {plot.with_suffix('.svg')}")
        if write_png(report["curve"], plot.with_suffix(".png")):
            print(f"wrote {plot.with_suffix('.png')}")
        else:
            print("no PNG: matplotlib is not installed (pip install 'specvoice[bench]')")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
