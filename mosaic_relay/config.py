"""Settings from a TOML file and ``MOSAIC_RELAY_*`` environment variables, under the command line.

Precedence, highest first: command-line flags, environment variables, the ``--config`` file (or
``MOSAIC_RELAY_CONFIG``), built-in defaults. Names are the long flags without ``--``: in the file
``max-streams = 4`` or ``max_streams = 4``; in the environment ``MOSAIC_RELAY_MAX_STREAMS=4``.
Booleans take true/false (env: 1/0, yes/no, on/off); repeatable flags and ``allowed-origins`` take a
TOML list or, in the environment, a comma-separated string. Unknown names are errors (typos in a
deployment must not be ignored silently). Values are converted and checked by the same argparse
types and choices as on the command line; ``run_server.validate`` checks the combined result.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "MOSAIC_RELAY_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A config file or environment value that cannot be used; the message names it."""


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long option of ``parser`` by its name without ``--`` (``--no-x`` aliases left out), and
    by its Settings field name (``ice-servers`` for ``--ice-server``)."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")]
        if longs and action.dest not in ("help", "config"):
            out[longs[0][2:]] = action
            out.setdefault(action.dest.replace("_", "-"), action)  # ice-servers as well as ice-server
    return out


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE | FALSE:
        return text in TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _scalar(action: argparse.Action, value: object, where: str) -> Any:
    if isinstance(value, bool | dict) or (isinstance(value, list) and action.type is not None):
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where}: expected a single value, got {value!r}")
        value = ",".join(value)  # a list of origins
    text = str(value)
    try:
        out = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as exc:  # its message is made to be shown (no secrets)
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid value {value!r} ({exc})") from exc
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{where}: {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out


def convert(action: argparse.Action, value: object, where: str) -> Any:
    """``value`` (from TOML: any type; from the environment: a string) as the flag would give it."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return _bool(value, where)
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        return [_scalar(action, item.strip() if isinstance(item, str) else item, where) for item in items]
    return _scalar(action, value, where)


def read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    return {key.replace("_", "-"): value for key, value in data.items()}


def read_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX) :].lower().replace("_", "-"): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key != CONFIG_ENV
    }


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(list(argv))
    path: Path | None = known.config
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    return path


def defaults_from(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]
) -> dict[str, Any]:
    """The parser defaults that the config file and the environment set (by ``dest``)."""
    known = options(parser)
    out: dict[str, Any] = {}
    path = config_path(argv, environ)
    sources: list[tuple[str, Mapping[str, object]]] = []
    if path is not None:
        sources.append((str(path), read_file(path)))
    sources.append(("environment", read_env(environ)))
    for origin, values in sources:
        for name, value in values.items():
            action = known.get(name)
            where = (
                f"{ENV_PREFIX}{name.upper().replace('-', '_')}"
                if origin == "environment"
                else f"{origin}: {name}"
            )
            if action is None:
                raise ConfigError(f"{where}: unknown setting (see --help for the names)")
            out[action.dest] = convert(action, value, where)
    return out
