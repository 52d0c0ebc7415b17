"""`specvoice bench tools`: spoken commands -> Whisper -> the model's call decision -> a constrained call.

Commands (bench/data/tool_commands.json: a `dev` set and a separate `test` set, >= 30) use the
event-planning skill (app/skills/events.py) or the support-bot tools (order lookup, transfer_call,
end_call); some are plain questions where the right reply is *not* a call. Each is spoken by an espeak-ng or
flite voice (never the assistant's Piper voice), transcribed by the real Whisper of the profile, and answered
by the real model of the profile with the scenario's tools in its system prompt (settings ending in `_hints`
use the transcript made with the tools' speech prompt, `ToolRegistry.speech_prompt`: each clip is
transcribed both ways, so the rows compare the same audio):

* decision: P(the reply starts with `<tool_call>`) against a threshold calibrated on the dev set;
* call: written under the schema mask (always well-formed; the tool and every value are the model's);
* the tool runs (a throwaway database seeded with a few events, the sample order table), its result is fed
  back, and the answer's first words are synthesised: timings from the end of speech.

Settings (tool prompt format, how the tool name is chosen) are compared on `dev`; the best on dev, and the
plain listing as the baseline, are then scored on `test` with their dev-calibrated thresholds. Writes JSON
(`--json`) and a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.tools_score import Command, calibrate_threshold, failed_arguments, load_commands, summarize
from bench.voice import load_average
from llm.tool_format import COMPACT_CALL_THRESHOLD, style_for

SETTINGS: dict[str, dict[str, Any]] = {
    # the format before this bench (listing, greedy name, free strings): the baseline
    "listing": {"examples": False, "name_choice": "greedy", "spans": False, "prior": False},
    "examples": {"examples": True, "name_choice": "greedy", "spans": False, "prior": False},
    "listing_spans": {"examples": False, "name_choice": "greedy", "spans": True, "prior": False},
    "listing_likelihood_spans": {
        "examples": False,
        "name_choice": "likelihood",
        "spans": True,
        "prior": False,
    },
    "listing_calibrated_spans": {
        "examples": False,
        "name_choice": "likelihood",
        "spans": True,
        "prior": True,
    },
    "examples_spans": {"examples": True, "name_choice": "greedy", "spans": True, "prior": False},
    "examples_likelihood_spans": {
        "examples": True,
        "name_choice": "likelihood",
        "spans": True,
        "prior": False,
    },
    "examples_calibrated_spans": {
        "examples": True,
        "name_choice": "likelihood",
        "spans": True,
        "prior": True,
    },
    "listing_channel_spans": {"examples": False, "name_choice": "channel", "spans": True, "prior": False},
    "examples_channel_spans": {"examples": True, "name_choice": "channel", "spans": True, "prior": False},
    # + the speech recogniser primed with the tools' examples and the names in their data (speech_prompt)
    "examples_spans_hints": {"examples": True, "name_choice": "greedy", "spans": True, "prior": False,
                             "asr_hints": True},
    "examples_channel_spans_hints": {"examples": True, "name_choice": "channel", "spans": True, "prior": False,
                                     "asr_hints": True},
}
# The default run: the baseline and the two best on dev in the comparison runs of all SETTINGS (docs/tools.md).
DEFAULT_RUN = ["listing", "examples_channel_spans", "examples_channel_spans_hints"]
CONTENT_FREE = ("N/A", "Okay.")  # user turns that say nothing: the tool-name prior (contextual calibration)
BASELINE = "listing"
HINTED = "+hints"  # clip key suffix: transcribed with the tools' speech prompt (ToolRegistry.speech_prompt)
PAD_S = 0.3  # silence around each clip, as a microphone's endpointed segment would have
SEED_EVENTS = {  # the benchmark's throwaway database: events and pending guests the commands refer to
    "Saturday's party": ["Sarah", "Maria"], "picnic": ["Emma", "David", "James", "Tom"],
    "wedding": ["Anna", "Tom", "John", "Sarah"], "barbecue": ["Peter", "Lisa", "Sam"], "office party": ["David", "Kate"],
    "Friday's dinner": ["Lisa", "Maria"],
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", help=f"comma-separated subset of: {', '.join(SETTINGS)} (dev compares them; "
                        f"default {','.join(DEFAULT_RUN)})")  # fmt: skip
    parser.add_argument("--split", choices=("dev", "both"), default="both",
                        help="dev: compare settings only; both (default): dev, then test for the baseline and "
                             "the best on dev")  # fmt: skip
    parser.add_argument("--limit", type=int, help="only the first N commands of each split (a smoke run)")
    parser.add_argument(
        "--commands", help="another commands file (same format as bench/data/tool_commands.json)"
    )
    parser.add_argument("--answer-tokens", type=int, default=24, help="answer length cap after a tool result")
    parser.add_argument("--no-text", action="store_true",
                        help="skip the diagnostic run of the chosen setting on the written test commands (no ASR)")  # fmt: skip


# -- scenarios --------------------------------------------------------------------------------------------
def scenario_tools(workdir: Path) -> dict[str, tuple[Any, dict[str, list]]]:
    """{scenario: (registry, examples)} over throwaway databases in `workdir`."""
    from app.skills import call_center, events, orders
    from app.skills.events_db import EventStore
    from app.tools import ToolRegistry

    store = EventStore(workdir / "events.db")
    for event, guests in SEED_EVENTS.items():
        for guest in guests:
            store.add_guest(event, guest)
    support = ToolRegistry()
    orders.register_order_tools(support, orders.OrderStore(workdir / "orders.db"))
    call_center.register_call_center_tools(support, call_center.CallActions())
    registries = {"events": events.register_event_tools(ToolRegistry(), store), "support": support}
    return {name: (registry, registry.examples) for name, registry in registries.items()}


def system_prompt(
    base: str, registry: Any, examples: dict[str, list], setting: dict[str, Any], tokenizer
) -> str:
    """The product's prompt (app/tool_turn.py `tools_system_prompt`: the tools' examples, and a plain
    answer's) or, without examples, the bare listing."""
    from app.tool_turn import tools_system_prompt
    from llm.tool_format import style_for, tools_prompt

    if setting["examples"]:
        return tools_system_prompt(base, registry, tokenizer)
    return f"{base}\n\n{tools_prompt(registry.specs, style_for(tokenizer), None)}"


# -- audio ------------------------------------------------------------------------------------------------
def speak_and_transcribe(commands: list[Command], transcriber: Any, log,
                         hints: dict[str, str | None] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every command spoken by a non-assistant voice (cycled) and transcribed: {key: clip info}; with
    `hints` (per scenario, the tools' `speech_prompt`) also transcribed with it: {key + HINTED: ...}."""
    from bench.voice_questions import RATE, VOICES, check_engines, synthesize

    check_engines()
    clips = {}
    for i, command in enumerate(commands):
        engine, voice, wpm = VOICES[i % len(VOICES)]
        pad = np.zeros(int(PAD_S * RATE), np.float32)
        audio = np.concatenate([pad, synthesize(command.text, engine, voice, wpm), pad])
        prompts = {"": None} | ({HINTED: hints.get(command.scenario)} if hints else {})
        for suffix, prompt in prompts.items():
            started = time.perf_counter()
            text = transcriber.transcribe(audio, prompt=prompt).text
            asr_ms = 1000.0 * (time.perf_counter() - started)
            clips[command.key + suffix] = {"voice": f"{engine}:{voice}", "transcript": text,
                                           "asr_ms": round(asr_ms, 1), "speech_s": round(len(audio) / RATE, 2)}  # fmt: skip
            log(f"    {command.key}{suffix} [{engine}:{voice}] {text!r}")
    return clips


# -- one command ------------------------------------------------------------------------------------------
def name_prior(llm: Any, prompt: str, registry: Any) -> dict[str, float]:
    """Each tool name's mean log-likelihood after content-free user turns (what the prompt alone favours)."""
    from llm.tool_format import name_log_likelihoods

    sums: dict[str, float] = {}
    for said in CONTENT_FREE:
        session = llm.session(system_prompt=prompt)
        session.extend(said)
        for name, score in name_log_likelihoods(session, registry.specs).items():
            sums[name] = sums.get(name, 0.0) + score / len(CONTENT_FREE)
    return sums


def run_command(llm: Any, prompt: str, registry: Any, setting: dict[str, Any], command: Command,
                clip: dict[str, Any], voice: Any | None, answer_tokens: int,
                prior: dict[str, float] | None = None, examples: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Decision + call (+ with `voice`: tool, answer, first audio) for one transcribed command."""
    import asyncio

    import torch

    from llm.tool_format import CALL_OPEN, tool_response, write_call

    session = llm.session(system_prompt=prompt)
    session.next_token_logits()  # the system prompt is prefilled before the user speaks, as in a session
    # The clock starts at the end of speech: ASR (measured on the clip) + what follows.
    started = time.perf_counter() - clip["asr_ms"] / 1000.0

    def ms() -> float:
        return round(1000.0 * (time.perf_counter() - started), 1)

    session.extend(clip["transcript"])
    session.append_reply([])
    logits = session.next_token_logits()
    first = session.tokenizer(CALL_OPEN, add_special_tokens=False)["input_ids"][0]
    p_call = float(torch.softmax(logits.float(), dim=-1)[first])
    argmax_call = int(logits.argmax()) == first
    timings = {"asr_ms": clip["asr_ms"], "decision_ms": ms()}
    trial: dict[str, Any] = {"key": command.key, "scenario": command.scenario, "text": command.text,
                             "transcript": clip["transcript"], "voice": clip["voice"],
                             "expected_tool": command.tool, "p_call": round(p_call, 5), "argmax_call": argmax_call,
                             "tool": None, "arguments": None, "tool_ok": False, "args_ok": False,
                             "failed_args": [], "timings_ms": timings}  # fmt: skip
    if command.tool is None:
        return trial  # whether it would have called is the decision; a call here is wrong whatever it says
    call = write_call(session, registry.specs, name_choice=setting["name_choice"],
                      spans_from=clip["transcript"] if setting["spans"] else None, name_prior=prior,
                      utterance=clip["transcript"], examples=examples)  # fmt: skip
    timings["tool_call_ms"] = ms()
    failed = (
        failed_arguments(command.args, call.arguments) if call.name == command.tool else list(command.args)
    )
    trial.update(tool=call.name, arguments=call.arguments, tool_ok=call.name == command.tool,
                 args_ok=call.name == command.tool and not failed, failed_args=failed,
                 invented=invented_values(registry, call.name, call.arguments, command.args))  # fmt: skip
    if voice is None:
        return trial
    result = asyncio.run(registry.call(call.name, call.arguments))
    timings["tool_result_ms"] = ms()
    trial["tool_error"] = result.error
    session.extend(tool_response(result.for_model()))
    text = ""
    generation = session.generate(answer_tokens)
    try:
        for delta in generation:
            if delta.text and "first_answer_token_ms" not in timings:
                timings["first_answer_token_ms"] = ms()
            text += delta.text
            if len(text.split()) > 3 or text.rstrip().endswith((".", "!", "?", ",")):
                break  # enough for the first spoken phrase (what a streaming reply hands the voice first)
    finally:
        close = getattr(generation, "close", None)
        if close is not None:
            close()
    if text.strip():
        next(iter(voice.synthesize(text.strip())))
        timings["first_audio_ms"] = ms()
    trial["answer_start"] = text.strip()
    return trial


def invented_values(registry: Any, name: str, arguments: dict[str, Any], checked: dict[str, Any]) -> dict:
    """Optional arguments the command does not check that the call set to something other than their
    default: values the user never gave ("dietary": "picnic"), which a real database would keep."""
    props = registry.tool(name).spec.parameters.get("properties", {})
    required = set(registry.tool(name).spec.parameters.get("required", []))
    return {k: v for k, v in arguments.items()
            if k not in checked and k not in required and v not in (props.get(k, {}).get("default"), None, "")}  # fmt: skip


def run_setting(llm: Any, tokenizer: Any, scenarios: dict[str, str], tools: dict, name: str,
                commands: list[Command], clips: dict, voice: Any | None, answer_tokens: int, log) -> list[dict]:  # fmt: skip
    setting = SETTINGS[name]
    prompts = {s: system_prompt(scenarios[s], *tools[s], setting, tokenizer) for s in scenarios}
    priors = {s: name_prior(llm, prompts[s], tools[s][0]) if setting["prior"] else None for s in scenarios}
    trials = []
    for command in commands:
        registry = tools[command.scenario][0]
        clip = clips[command.key + HINTED] if setting.get("asr_hints") else clips[command.key]
        trial = run_command(llm, prompts[command.scenario], registry, setting, command, clip,
                            voice, answer_tokens, priors[command.scenario], tools[command.scenario][1])  # fmt: skip
        trials.append(trial)
        verdict = ("answer" if command.tool is None else
                   f"{trial['tool']} {json.dumps(trial['arguments'])}"
                   f"{'' if trial['args_ok'] else ' X ' + ','.join(trial['failed_args']) if trial['tool_ok'] else ' X tool'}")  # fmt: skip
        log(f"    {command.key} p_call {trial['p_call']:.4f}  {verdict}")
    return trials


def run_bench(assistant: Any, settings: list[str], splits: dict[str, list[Command]], scenarios: dict[str, str],
              which: str = "both", answer_tokens: int = 24, log=print, text_too: bool = False,
              warm_up: bool = True) -> dict[str, Any]:  # fmt: skip
    llm, tokenizer = assistant.llm, assistant.llm.tokenizer
    report: dict[str, Any] = {"load_average": {"start": load_average()}, "dev": {}, "test": {}}
    with tempfile.TemporaryDirectory(prefix="specvoice-bench-tools-") as tmp:
        tools = scenario_tools(Path(tmp))
        commands = splits["dev"] + (splits["test"] if which != "dev" else [])
        log(f"  speaking and transcribing {len(commands)} commands")
        hints = {name: registry.speech_prompt() for name, (registry, _) in tools.items()}
        if not any(SETTINGS[n].get("asr_hints") for n in settings):
            hints = None
        clips = speak_and_transcribe(commands, assistant.transcriber, log, hints)
        if warm_up:  # first calls (allocations, caches) are not what a user meets: one unmeasured
            run_setting(llm, tokenizer, scenarios, tools, settings[0], splits["dev"][:1], clips, assistant.voice,
                        answer_tokens, lambda *_: None)  # fmt: skip
        for name in settings:
            log(f"  [dev: {name}]")
            trials = run_setting(llm, tokenizer, scenarios, tools, name, splits["dev"], clips, None,
                                 answer_tokens, log)  # fmt: skip
            threshold = calibrate_threshold(
                [t["p_call"] for t in trials], [t["expected_tool"] is not None for t in trials]
            )
            report["dev"][name] = {"summary": summarize(trials, threshold), "trials": trials}
        best = max(settings, key=lambda n: (report["dev"][n]["summary"]["end_to_end"]["correct"],
                                            report["dev"][n]["summary"]["tool_and_arguments_forced"]["correct"],
                                            -settings.index(n)))  # fmt: skip
        report["chosen_on_dev"] = best
        if which != "dev":
            for name in dict.fromkeys([BASELINE, best] if BASELINE in settings else [best]):
                log(f"  [test: {name}{' (chosen on dev)' if name == best else ' (baseline)'}]")
                trials = run_setting(llm, tokenizer, scenarios, tools, name, splits["test"], clips,
                                     assistant.voice, answer_tokens, log)  # fmt: skip
                threshold = report["dev"][name]["summary"]["threshold"]
                report["test"][name] = {"summary": summarize(trials, threshold), "trials": trials}
                if name == best and style_for(tokenizer) == "compact":  # the threshold the product ships
                    shipped = summarize(copy.deepcopy(trials), COMPACT_CALL_THRESHOLD)
                    report["test"][name]["summary_at_shipped_threshold"] = shipped
            if text_too:  # diagnostic: the same commands as written, no ASR: how much the ears cost
                log(f"  [test, written text instead of speech: {best}]")
                written = {
                    c.key + suffix: {**clips[c.key], "transcript": c.text, "asr_ms": 0.0}
                    for c in splits["test"] for suffix in ("", HINTED)
                }
                trials = run_setting(llm, tokenizer, scenarios, tools, best, splits["test"], written, None,
                                     answer_tokens, log)  # fmt: skip
                threshold = report["dev"][best]["summary"]["threshold"]
                report["test_written"] = {best: {"summary": summarize(trials, threshold), "trials": trials}}
    report["load_average"]["end"] = load_average()
    report["settings"] = {"settings": {n: SETTINGS[n] for n in settings}, "answer_tokens": answer_tokens,
                          "voices": sorted({c["voice"] for c in clips.values()}), "speech_prompts": hints,
                          "commands": {k: len(v) for k, v in splits.items()},
                          "clock": "from the end of the speech clip: ASR of the whole clip (measured), then the "
                                   "decision, the call, the tool, the answer's first phrase and its first audio; "
                                   "no endpointing delay (bench voice measures that)",
                          "torch_threads": _threads()}  # fmt: skip
    return report



def _threads() -> int:
    import torch

    return torch.get_num_threads()


# -- output -----------------------------------------------------------------------------------------------
def _rate(share: dict[str, Any]) -> str:
    return f"{share['correct']}/{share['n']} ({100 * share['rate']:.0f}%)" if share["n"] else "-"


def print_table(report: dict[str, Any]) -> None:
    rows = [(split, name, run["summary"]) for split in ("dev", "test", "test_written")
            for name, run in report.get(split, {}).items()]  # fmt: skip
    head = f"{'split':12} {'setting':26} {'end-to-end':>12} {'decision':>12} {'argmax dec.':>12} " \
           f"{'tool (forced)':>14} {'tool+args':>12} {'threshold':>9}"  # fmt: skip
    print(head)
    print("-" * len(head))
    for split, name, s in rows:
        print(f"{split:12} {name:26} {_rate(s['end_to_end']):>12} {_rate(s['decision']):>12} "
              f"{_rate(s['decision_argmax']):>12} {_rate(s['tool_forced']):>14} "
              f"{_rate(s['tool_and_arguments_forced']):>12} {s['threshold']:>9.4f}")  # fmt: skip
    print(f"chosen on dev: {report['chosen_on_dev']}")
    for name, run in report["test"].items():
        shipped = run.get("summary_at_shipped_threshold")
        if shipped:
            print(f"test {name} at the shipped threshold {shipped['threshold']:g} (llm/tool_format.py): "
                  f"end to end {_rate(shipped['end_to_end'])}, decision {_rate(shipped['decision'])}")
    for name, run in report["test"].items():
        timings = run["summary"]["timings_ms"]
        if "first_audio_ms" in timings:
            print(f"test {name}: ms from end of speech, p50 / p95 (min-max):")
            for key, s in timings.items():
                print(f"  {key:24} {s['p50']:>8} / {s['p95']:<8} ({s['min']}-{s['max']}, n={s['n']})")
    print(f"load average start {report['load_average']['start']} end {report['load_average']['end']}")


def run(args: argparse.Namespace, config: Any) -> int:
    from app.assistant import Assistant
    from bench.voice_questions import VoiceUnavailable

    settings = args.settings.split(",") if args.settings else DEFAULT_RUN
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        print(f"bench tools: unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    scenarios, splits = load_commands(Path(args.commands)) if args.commands else load_commands()
    if args.limit:
        splits = {k: v[: args.limit] for k, v in splits.items()}
    logging.getLogger("app").setLevel(logging.WARNING)
    assistant = Assistant.load(config)
    if not hasattr(assistant.llm, "session") or not hasattr(assistant.llm, "tokenizer"):
        print("bench tools: needs a local model (llm.backend = local)", file=sys.stderr)
        return 2
    print(f"bench tools: {len(splits['dev'])} dev + {len(splits['test'])} test commands, settings "
          f"{', '.join(settings)}, model {assistant.profile.name}")  # fmt: skip
    try:
        report = run_bench(assistant, settings, splits, scenarios, args.split, args.answer_tokens,
                           text_too=not args.no_text)  # fmt: skip
    except VoiceUnavailable as exc:
        print(f"bench tools: {exc}", file=sys.stderr)
        return 2
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0
