"""Hydra-style ``key=value`` command lines for the model commands (predict, visualize, export,
serve): parsing, checked option values, and one line on stderr with exit code 2 for any
expected failure (a bad checkpoint, picture, file or argument), never a traceback."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from maist.errors import UsageError, UserError, first_line
from maist.text import printable

EXIT_USAGE = 2


def parse_cli(argv: Sequence[str], defaults: dict[str, Any], usage: str) -> dict:
    """``key=value`` arguments (parsed by OmegaConf) over ``defaults``. Unknown keys and
    malformed arguments raise :class:`UsageError`; ``-h``/``--help`` prints ``usage``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    argv = list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise UsageError(f"arguments are key=value, got {bad[0]!r}. Usage:\n{usage}")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(argv), resolve=True)
    except (OmegaConfBaseException, ValueError) as err:
        raise UsageError(f"cannot parse the arguments ({first_line(err)})") from err
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]}= (known: {', '.join(sorted(defaults))})")
    return {**defaults, **given}


def int_option(cfg: dict, key: str, minimum: int = 1) -> int:
    """``cfg[key]`` as a whole number ≥ ``minimum``, else a :class:`UsageError` naming the option."""
    value = cfg.get(key)
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        number = int(float(value))
    except (TypeError, ValueError):
        raise UsageError(f"{key}={value!r}: give a whole number ≥ {minimum}") from None
    if number < minimum:
        raise UsageError(f"{key}={number}: must be at least {minimum}")
    return number


def float_option(cfg: dict, key: str, low: float, high: float, optional: bool = False) -> float | None:
    """``cfg[key]`` as a number in (``low``, ``high``]; ``None`` when unset and ``optional``."""
    value = cfg.get(key)
    if optional and value in (None, "", "null", "None"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}={value!r}: give a number in ({low:g}, {high:g}]") from None
    if not (math.isfinite(number) and low < number <= high):
        raise UsageError(f"{key}={value!r}: must lie in ({low:g}, {high:g}]")
    return number


def cli(main_fn: Callable[[list[str]], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv)``: a :class:`~maist.errors.UserError` (a bad setting, file,
    checkpoint or picture) becomes ``error: …`` on stderr and exit code 2."""

    def run(argv: list[str] | None = None) -> int:
        try:
            return main_fn(sys.argv[1:] if argv is None else list(argv))
        except UserError as err:
            print(f"error: {printable(err)}", file=sys.stderr)  # names from files are data: escaped
            return EXIT_USAGE
        except KeyboardInterrupt:
            return 130

    return run
