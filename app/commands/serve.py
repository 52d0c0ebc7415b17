"""`specvoice serve`: the websocket server (Realtime API, telephony, browser page) on one port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from app.commands import add_skill_argument, apply_skills, install_skills

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; anything else needs --token)")
    parser.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--api-port", type=int,
                        help="OpenAI-compatible chat API port (default: --port + 1; 0 turns it off)")  # fmt: skip
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="require the token in FILE from clients (Bearer header or ?token=); or set SPECVOICE_SERVER_TOKEN",
    )
    parser.add_argument(
        "--token", help="the token itself (visible to every user in `ps`: prefer --token-file or the env var)"
    )
    parser.add_argument("--max-sessions", type=int, help="refuse connections beyond this many (default 8)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another web origin allowed to connect (repeatable; the page's own is always allowed)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients may use besides loopback ones, e.g. voice.example.com (repeatable)",
    )
    add_skill_argument(parser)


def run(args: argparse.Namespace, config) -> int:
    from app.cli import UsageError
    from app.server import InsecureBindError, check_bind

    for name, value in (
        ("host", args.host),
        ("port", args.port),
        ("api_port", args.api_port),
        ("token", args.token),
        ("max_sessions", args.max_sessions),
    ):
        if value is not None:
            config.set(f"server.{name}", value)
    if args.token is not None:
        log.warning("--token is visible to every user of this machine (ps); prefer --token-file or SPECVOICE_SERVER_TOKEN")
    if args.token_file:
        config.set("server.token", read_token_file(args.token_file))
    if args.allow_host:
        config.server.allowed_hosts = [*config.server.allowed_hosts, *args.allow_host]
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
    apply_skills(args, config)
    assistant = Assistant.load(config)
    install_skills(assistant)
    return asyncio.run(_serve(assistant, config))


def read_token_file(path: str) -> str:
    """The first line of `path`, stripped; a missing, unreadable or empty file is a usage error."""
    from app.cli import UsageError

    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise UsageError(f"cannot read --token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token


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
    chat_api = await _start_chat_api(assistant, config, server.port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down", flush=True)
    if chat_api is not None:
        await chat_api.close()
    await server.close()
    return 0


async def _start_chat_api(assistant, config, main_port: int, host: str):
    """The OpenAI-compatible chat API beside the websocket port (app/server/openai_api.py), unless off."""
    from app.server.openai_api import ChatApi, api_port

    port = api_port(config, main_port)
    if port is None:
        return None
    chat_api = ChatApi(assistant, config, port=port)
    try:
        await chat_api.start()
    except OSError as exc:
        from app.cli import UsageError

        raise UsageError(
            f"cannot listen on {config.server.host}:{port} for the chat API: {exc.strerror or exc} "
            "(set --api-port, or 0 to turn it off)"
        ) from None
    print(f"  chat API:       http://{host}:{chat_api.port}/v1 (OpenAI-compatible)", flush=True)
    return chat_api
