"""The node's config file (``--config FILE``): TOML whose keys are the long flags' names.

    port = 7000
    peer = ["10.0.0.2:7000", "10.0.0.3:7000"]
    http-port = 8000
    http-host = "0.0.0.0"
    http-token-file = "/etc/p2pchain/token"
    mine = true

Each value goes through the same check as the flag's (a port is a port, ``log-level`` one of its
choices) and must be a TOML number where the flag takes a number and a string where it takes text;
a flag that takes no value (``mine``) is a boolean; a repeatable flag (``peer``) is an array. A
flag on the command line overrides the file's key (a repeatable one replaces the file's whole
list). Anything wrong is one line naming the key and the file. Relative paths are taken
from the working directory, as on the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

NOT_IN_FILE = frozenset({"config", "help", "version"})


class ConfigError(ValueError):
    """A config file the node cannot use; the message is one line naming the file and the key."""


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long flag name without dashes -> its argparse action."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option[2:] not in NOT_IN_FILE:
                found[option[2:]] = action
    return found


def _one_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: {key} must be a single number or string, not {_toml_type(value)}")
    text = str(value)
    converted: Any = text
    if action.type is not None:
        convert: Any = action.type
        try:
            converted = convert(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {key} = {value!r}: {e}") from None
    if isinstance(converted, int | float) != isinstance(value, int | float):  # port = "7000", host = 7
        want = "a number" if isinstance(converted, int | float) else "a string"
        raise ConfigError(f"{where}: {key} must be {want}, not {_toml_type(value)} {value!r}")
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{where}: {key} = {value!r} is not one of {choices}")
    return converted


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return {int: "an integer", float: "a float", str: "a string"}.get(type(value), type(value).__name__)


def load(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(defaults for the parser by dest, lists of the repeatable flags by dest) from ``path``."""
    import tomllib  # only with --config: a node started without one never loads the TOML parser

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    actions = _flag_actions(parser)
    values: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    for key, value in doc.items():
        where = f"config file {path}"
        action = actions.get(key)
        if action is None:
            hint = "keys are the long flags' names without dashes, e.g. port, peer, http-host (see --help)"
            raise ConfigError(f"{where}: unknown key {key!r}: {hint}")
        if action.nargs == 0:  # a flag without a value: store_true
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false, not {_toml_type(value)}")
            values[action.dest] = value if action.const is True else not value
        elif isinstance(action, argparse._AppendAction):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {key} must be an array, e.g. {key} = [{value!r}]")
            lists[action.dest] = [_one_value(action, key, v, where) for v in value]
        else:
            values[action.dest] = _one_value(action, key, value, where)
    return values, lists


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the defaults of ``--config FILE`` if given (flags win).
    ConfigError if the file cannot be used. The command line is parsed first to find the file
    the way every other flag is found (an abbreviation such as ``--conf`` included: a pre-parser
    of its own once took ``--config`` only, and ``--conf FILE`` was accepted but not read), then
    again over the file's values."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if path is None:
        return args
    values, lists = load(path, parser)
    parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for dest, items in lists.items():
        if not getattr(args, dest):  # not given on the command line: the file's list
            setattr(args, dest, items)
    return args
