"""Checked settings: one way to say that a value cannot work.

Every configurable class (data, preprocessing, networks, augmentation, schedules, callbacks) and
every command checks its settings here when it is built, so a bad value fails at once, before any
data is decoded, as one line that names the setting and what it must be:
``data.batch_size=0: must be a whole number ≥ 1`` (:class:`~maist.errors.ConfigError`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from numbers import Integral, Real

from maist.errors import ConfigError


def _fail(name: str, value, what: str) -> ConfigError:
    return ConfigError(f"{name}={value!r}: {what}")


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def whole(name: str, value, minimum: int = 0, maximum: int | None = None, why: str = "") -> int:
    """``value`` as an int in [``minimum``, ``maximum``]; a float with a fraction, a bool or a string fails."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    bound = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
    if not ok or value < minimum or (maximum is not None and value > maximum):
        raise _fail(name, value, f"must be a whole number {bound}{why}")
    return int(value)


def optional_whole(name: str, value, minimum: int = 0, maximum: int | None = None) -> int | None:
    """:func:`whole`, or ``None`` for an unset value."""
    return None if value is None else whole(name, value, minimum, maximum, " (or null)")


def number(
    name: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (each end closed unless
    ``*_open``); a bool or a string fails."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if math.isinf(low) and math.isinf(high):
        what = "a finite number"
    elif math.isinf(high):
        what = f"a finite number {'>' if low_open else '≥'} {low:g}"
    elif math.isinf(low):
        what = f"a finite number {'<' if high_open else '≤'} {high:g}"
    else:
        what = f"a number in {left}{low:g}, {high:g}{right}"
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(name, value, f"must be {what}")
    v = float(value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise _fail(name, value, f"must be {what}")
    return v


def positive(name: str, value) -> float:
    """A finite number > 0 (a learning rate, a scale)."""
    return number(name, value, 0.0, low_open=True)


def fraction(name: str, value, *, high_open: bool = True) -> float:
    """A number in [0, 1) (or [0, 1] with ``high_open=False``)."""
    return number(name, value, 0.0, 1.0, high_open=high_open)


def probability(name: str, value) -> float:
    """A keep probability: a number in (0, 1] (0 would zero the layer)."""
    return number(name, value, 0.0, 1.0, low_open=True)


def choice(name: str, value, options: Collection[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise _fail(name, value, f"must be one of {', '.join(options)}")
    return value


def flag(name: str, value) -> bool:
    """A bool (true/false), not a number or a string."""
    if not isinstance(value, bool):
        raise _fail(name, value, "must be true or false")
    return value


def wholes(name: str, values, minimum: int = 1, length: int | None = None) -> tuple[int, ...]:
    """A list of whole numbers ≥ ``minimum`` (of ``length`` entries, if given)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise _fail(name, values, f"must be a list of whole numbers ≥ {minimum}")
    if length is not None and len(values) != length:
        raise _fail(name, values, f"must be a list of {length} whole numbers ≥ {minimum}")
    return tuple(whole(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def interval(name: str, values, low: float = 0.0, low_open: bool = True) -> tuple[float, float]:
    """A [lo, hi] pair with ``low`` < lo ≤ hi (a scale range)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
        raise _fail(name, values, "must be a pair [lo, hi]")
    lo = number(f"{name}[0]", values[0], low, low_open=low_open)
    hi = number(f"{name}[1]", values[1], low, low_open=low_open)
    if lo > hi:
        raise _fail(name, list(values), "must be a pair [lo, hi] with lo ≤ hi")
    return lo, hi
