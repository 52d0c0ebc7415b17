"""The `specvoice` command. Each subcommand lives in its own module and is imported only when used,
so `specvoice --help` is instant and a missing optional dependency only affects its own command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from app.commands import UsageError
from app.config import ConfigError, load_config

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args, config) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "reply": ("app.commands.reply", "answer one spoken question from an audio file (writes the reply WAV)"),
    "models": ("app.commands.models", "list or fetch the models of a profile"),
    "serve": ("app.commands.serve", "run the websocket server (Realtime API, telephony, browser page)"),
    "talk": ("app.commands.talk", "talk to the assistant through the desktop microphone and speakers"),
    "client": ("app.commands.client", "stream a file or the microphone to a specvoice server"),
    "bench": ("app.commands.bench", "benchmarks: llm, voice, serve, tools, gpu"),
    "events": ("app.commands.events", "the event-planning skill's database: list, show, export"),
}


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: printed as one line, exit code 2. `BackendUnavailable` counts
    once llm/backends.py is loaded (it cannot be raised before; importing it here would load torch)."""
    errors: tuple[type[Exception], ...] = (ConfigError, UsageError)  # UsageError: re-exported for commands
    backends = sys.modules.get("llm.backends")
    return errors + (backends.BackendUnavailable,) if backends else errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specvoice",
        description="A real-time voice assistant: streaming ASR, speculative LLM decoding, incremental TTS.",
        epilog="Settings: --config FILE, SPECVOICE_<SECTION>_<NAME> env vars, or --set section.name=value.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $SPECVOICE_CONFIG or "
                        "~/.config/specvoice/config.toml if present)")
    parser.add_argument("--profile", help="model profile: cpu (default, offline), gpu-h100, gpu-local")
    parser.add_argument("--device", help="LLM device: auto, cpu, cuda")
    parser.add_argument("--dtype", help="LLM dtype: auto, float32, bfloat16, float16, fp8")
    parser.add_argument("--system-prompt", help="system prompt for the assistant")
    parser.add_argument("--offline", action="store_true", default=None,
                        help="never download; use cached models only")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="set any config value (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(cmd)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {
        "models.profile": args.profile,
        "llm.device": args.device,
        "llm.dtype": args.dtype,
        "llm.system_prompt": args.system_prompt,
        "models.offline": args.offline,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects SECTION.NAME=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from app.server.redact import install as redact_secrets

    redact_secrets(*logging.getLogger().handlers)  # no token in any log line, at any verbosity
    if not args.command:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config, overrides_from_args(args))
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args, config) or 0)
    except user_errors() as exc:
        print(f"specvoice: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an unexpected failure: one line, the traceback only when asked for
        if args.verbose:
            raise
        print(f"specvoice: error: {type(exc).__name__}: {exc} (run with -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
