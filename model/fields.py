"""Typed config fields: a default, a check its values must pass, and the words for the check.

A config section (model/config.py's, and each family's in model/network.py, model/cnn.py, ...)
is a frozen dataclass of these fields deriving from `Checked`: a bad value is a UsageError
naming the key, at construction."""
from __future__ import annotations

import math
from dataclasses import field, fields

from plumbing.errors import UsageError

_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def typed(default, check, want: str):
    """A config field: its default, and the check its values must pass (`want` says it)."""
    return field(default=default, metadata={"types": _TYPES[type(default)], "check": check,
                                            "want": want})


def in_range(default, lo, hi):
    return typed(default, lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


def one_of(default, options):
    return typed(default, lambda v: v in options, f"one of {list(options)}")


def flag(default: bool):
    return typed(default, lambda v: True, "true or false")


def check_value(key: str, value, meta) -> None:
    """A UsageError naming `key` unless `value` has the field's type and passes its check."""
    types = meta["types"]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise UsageError(f"config key {key!r}: expected {'/'.join(t.__name__ for t in types)}, "
                         f"got {value!r}")
    if isinstance(value, float) and not math.isfinite(value) or not meta["check"](value):
        raise UsageError(f"config key {key!r}: must be {meta['want']}, got {value!r}")


class Checked:
    """Checks every field's value after construction (a section may add `check()` for rules
    across its fields)."""

    def __post_init__(self):
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), f.metadata)
        self.check()

    def check(self) -> None:
        pass
