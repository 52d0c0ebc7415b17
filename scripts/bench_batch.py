"""Batched vs sequential decoding of N concurrent replies on the product's LLM (bench/llm_batch.py).

    .venv/bin/python scripts/bench_batch.py [--levels 1,2,4,8] [--max-tokens 32] [--repeats 2]
        [--drafter ngram|none] [--json out.json] [--set llm.quant=none ...]

The engine is loaded exactly as `specvoice serve` loads it (default profile: bf16, int4 1-row steps, the
configured torch threads and drafter), so the numbers are the serving path's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--drafter", choices=("ngram", "none", "profile"), default="profile",
                        help="override the profile's drafter (ngram / none)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. llm.threads=2")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from app.assistant import load_engine
    from app.config import load_config
    from app.profiles import resolve_profile
    from bench.llm_batch import measure, table

    config = load_config(overrides=dict(item.split("=", 1) for item in args.set))
    engine = load_engine(resolve_profile(config), config)
    if args.drafter != "profile":
        engine.drafter_kind = args.drafter
    report = measure(engine, [int(n) for n in args.levels.split(",")], args.max_tokens, args.repeats,
                     config.llm.system_prompt)  # fmt: skip
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
