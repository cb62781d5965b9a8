"""Facts several modules share. Names that users give (dataset versions, run ids, evaluation sets, tasks)
become folder names and SQL values, so they must be names, never paths."""

from __future__ import annotations

import re

# Letters, digits, '.', '-', '_'; not starting with a dot (no '.', '..', hidden folders); at most 128 long.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, value: object) -> str:
    """`value` when it is a valid name, else ValueError saying what `kind` (e.g. "version") must look like."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} name {value!r} is not allowed: use letters, digits, '.', '-' and '_' (at most 128, "
            "not starting with '.'); a name is never a path"
        )
    return value
