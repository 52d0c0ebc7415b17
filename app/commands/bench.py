"""`specvoice bench {llm,voice,serve,gpu,tools}`: side-by-side benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "llm": ("bench.llm", "HF generate vs our engine, autoregressive and speculative"),
    "voice": ("bench.voice", "turn taking: wait after speech, false endpoints; configurations vs sequential"),
    "serve": ("bench.serve", "concurrent websocket sessions: latency, errors, memory"),
    "gpu": ("bench.gpu", "GPU step times, FP8 vs bf16, kernels vs reference (random weights)"),
    "tools": ("bench.tools", "spoken commands -> tool calls: decision, tool and argument accuracy, timings"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module_name, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ImportError:
            pass  # not built yet; run() reports it


def run(args: argparse.Namespace, config) -> int:
    module = importlib.import_module(BENCHES[args.bench][0])
    return int(module.run(args, config) or 0)
