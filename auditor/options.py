"""Command-line values: durations in Go/Hubble syntax, environment-variable twins, checked choices.

Stage: front end (pure parsing, used by the commands of ``auditor.commands``). Input: strings from the
command line or from a ``FLOW_AUDITOR_<OPTION>`` variable. Output: typed values for ``argparse``.

An option's environment twin is its default, read as a :class:`FromEnv` string: ``argparse`` converts a
string default with the option's ``type`` only when the option is absent from the command line (the
command line wins, and a bad variable of another subcommand is never read), and every converter here is
wrapped by :func:`typed`, so a bad value is reported naming the variable
(``argument --dedup-window: FLOW_AUDITOR_DEDUP_WINDOW='30x': invalid duration …``).

Durations follow Go's ``time.ParseDuration`` (what ``hubble observe --since`` and Cilium's flags take):
one or more decimal numbers with a unit each (``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``), as in
``1h30m``, ``90s``, ``500ms``, ``1.5h``, ``2m30.5s``; a bare number is seconds (as before). ``nan``, ``inf``,
negative values and exponents are refused, and so is anything above Go's largest duration (≈ 292 years).

Error policy: converters raise :class:`argparse.ArgumentTypeError` with a one-line reason.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

T = TypeVar("T")

ENV_PREFIX: Final = "FLOW_AUDITOR_"
MAX_DURATION: Final = 2562047 * 3600.0  # Go's largest duration, in whole hours (≈ 292 years)
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER: Final = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT: Final = r"(?:ns|us|µs|μs|ms|s|m|h)"  # longest first where one is a prefix of another
_SECONDS_RE: Final = re.compile(rf"\+?{_NUMBER}")
_GO_DURATION_RE: Final = re.compile(rf"\+?(?:{_NUMBER}{_UNIT})+")
_PART_RE: Final = re.compile(rf"({_NUMBER})({_UNIT})")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


class FromEnv(str):
    """A value read from an environment variable; ``variable`` names it in error messages."""

    variable: str


def env_name(option: str) -> str:
    """``dedup-window`` → ``FLOW_AUDITOR_DEDUP_WINDOW``."""
    return ENV_PREFIX + option.upper().replace("-", "_")


def env(option: str, default: T) -> FromEnv | T:
    """The option's environment twin as a :class:`FromEnv` string, or ``default`` when it is unset."""
    name = env_name(option)
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = FromEnv(raw)
    value.variable = name
    return value


def origin(flag: str, value: object) -> str:
    """The name to blame for ``value``: its environment variable, or the flag."""
    return value.variable if isinstance(value, FromEnv) else flag


def typed(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert`` for argparse, naming the environment variable when the value came from one."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as e:
            if isinstance(text, FromEnv):
                raise argparse.ArgumentTypeError(f"{text.variable}={str(text)!r}: {e}") from None
            raise

    parse.__name__ = convert.__name__
    return parse


def duration_seconds(text: str) -> float:
    """A duration of zero or more, in seconds (see the module docstring for the syntax)."""
    value = str(text).strip()
    if _SECONDS_RE.fullmatch(value):
        seconds = float(value)
    elif _GO_DURATION_RE.fullmatch(value):
        seconds = math.fsum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART_RE.findall(value))
    else:
        raise argparse.ArgumentTypeError(
            f"invalid duration {str(text)!r} (e.g. 1h30m, 90s, 500ms, 1.5h, or a number of seconds)"
        )
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"duration {str(text)!r} is too long (at most 2562047h)")
    return seconds


def parse_duration(text: str) -> float:
    """A positive duration in seconds: every duration flag (a window or an interval of 0 means nothing)."""
    seconds = duration_seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {str(text)!r}: must be more than 0")
    return seconds


def positive_number(text: str) -> float:
    """A finite number above 0 (``nan``, ``inf`` and ``0`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid value {str(text)!r}: expected a number above 0")
    return value


def choice(choices: Iterable[str]) -> Callable[[str], str]:
    """One of ``choices``; checked for environment defaults too (argparse checks only the command line)."""
    allowed = tuple(choices)

    def one_of(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(
                f"invalid choice {str(text)!r} (choose from {', '.join(allowed)})"
            )
        return str(text)

    return one_of


def env_bool(value: object) -> bool:
    """A ``store_true`` option whose default came from its environment twin (or was not set)."""
    if not isinstance(value, str):
        return bool(value)
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"{origin('flag', value)}={str(value)!r}: expected true or false (1/0, yes/no, on/off)"
    )
