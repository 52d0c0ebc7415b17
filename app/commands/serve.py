"""`specvoice serve`: the websocket server (Realtime API, telephony, browser page) on one port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; anything else needs --token)")
    parser.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--token", help="require this token from clients (Bearer header or ?token=)")
    parser.add_argument("--max-sessions", type=int, help="refuse connections beyond this many (default 8)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to connect (repeatable; the page's own is always allowed)",
    )


def run(args: argparse.Namespace, config) -> int:
    from app.cli import UsageError
    from app.server import InsecureBindError, check_bind

    for name, value in (
        ("host", args.host),
        ("port", args.port),
        ("token", args.token),
        ("max_sessions", args.max_sessions),
    ):
        if value is not None:
            config.set(f"server.{name}", value)
    if args.allow_origin:
        config.server.allowed_origins = [*config.server.allowed_origins, *args.allow_origin]
    if config.server.max_sessions < 1:
        raise UsageError("--max-sessions must be at least 1")
    if not 0 <= config.server.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {config.server.port}")
    try:
        check_bind(config)  # before loading models: a refused start should be instant
    except InsecureBindError as exc:
        raise UsageError(str(exc)) from None

    from app.assistant import Assistant

    print("loading models...", flush=True)
    assistant = Assistant.load(config)
    return asyncio.run(_serve(assistant, config))


async def _serve(assistant, config) -> int:
    from app.server import Server

    server = Server(assistant, config)
    try:
        await server.start()
    except OSError as exc:
        from app.cli import UsageError

        raise UsageError(
            f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}"
        ) from None
    host = config.server.host if ":" not in config.server.host else f"[{config.server.host}]"
    base = f"{host}:{server.port}"
    print(f"specvoice listening on {base}", flush=True)
    print(f"  browser page:   http://{base}/", flush=True)
    print(f"  Realtime API:   ws://{base}/v1/realtime", flush=True)
    print(f"  telephony:      ws://{base}/twilio", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down", flush=True)
    await server.close()
    return 0
