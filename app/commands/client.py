"""`specvoice client` (not built yet)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config) -> int:
    raise SystemExit("specvoice client: not implemented yet")
