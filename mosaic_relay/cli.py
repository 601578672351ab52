"""``mosaic-relay``: the console command that ``pip install .`` gives.

    mosaic-relay serve [--config FILE] [--port 8080] ...   the server (= run_server.py, same flags)
    mosaic-relay offline ...                                 pixelate a recorded file (relay.offline)

``run_server.py`` in a checkout and ``mosaic-relay serve`` run the same code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from mosaic_relay import __version__

USAGE = """usage: mosaic-relay [--version] {serve,offline} ...

  serve     run the relay server (mosaic-relay serve --help lists every flag)
  offline   pixelate a recorded video file (mosaic-relay offline --help)
"""


def _serve(argv: list[str]) -> int:
    import run_server

    return run_server.main(argv, prog="mosaic-relay serve")


def _offline(argv: list[str]) -> int:
    try:
        offline = importlib.import_module("relay.offline")
    except ModuleNotFoundError as exc:
        if exc.name != "relay.offline":
            raise
        print(
            "mosaic-relay: error: 'offline' is not available in this version (relay/offline.py is missing)",
            file=sys.stderr,
        )
        return 2
    entry: Callable[[list[str]], int | None] = offline.main
    return int(entry(argv) or 0)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"serve": _serve, "offline": _offline}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"mosaic-relay {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(USAGE + f"mosaic-relay: error: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    return command(args[1:])
