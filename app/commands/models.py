"""`specvoice models list|pull`: show the models of a profile and where they are cached; fetch them."""

from __future__ import annotations

import argparse
import sys

from app.config import Config
from app.profiles import PROFILES, resolve_profile
from app.store import ModelUnavailable, cache_root, cached_path, fetch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="show each model of the profile(s) and whether it is cached")
    lst.add_argument("--all", action="store_true", help="list every profile, not just the selected one")
    pull = sub.add_parser("pull", help="fetch (and prepare) the models of the selected profile")
    pull.add_argument("--no-prepare", action="store_true",
                      help="only download; skip converting the LLM to its fast-loading cached form")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.action == "list":
        profiles = list(PROFILES.values()) if args.all else [resolve_profile(config)]
        print(f"cache: {cache_root()}")
        for profile in profiles:
            print(f"\n{profile.name}: {profile.description}")
            for role, source in profile.sources().items():
                path = cached_path(source)
                state = f"cached  {path}" if path else "missing"
                print(f"  {role:<6} {source}\n         {state}")
            if profile.draft in ("ngram", "none", "head"):
                print(f"  draft  {profile.draft} (no model)")
        return 0

    profile = resolve_profile(config)
    failed = 0
    for role, source in profile.sources().items():
        try:
            path = fetch(source, offline=config.models.offline)
            if role == "llm" and not args.no_prepare and path.suffix == ".gguf":
                from llm.loading import ensure_hf_folder

                path = ensure_hf_folder(path)
            print(f"{role:<6} ok  {path}")
        except ModelUnavailable as exc:
            failed += 1
            print(f"{role:<6} FAILED  {exc}", file=sys.stderr)
    return 1 if failed else 0
