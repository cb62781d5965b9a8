"""Command-line flags taken from the stages' config dataclasses, so a default is written once: in the dataclass.

`config_flag(parser, "--near-k", DedupConfig, "near_k", "help")` adds a flag whose type is the field's and
whose default is the field's (shown in the help, never restated); the parsed value is None unless the flag
was given. `from_flags(DedupConfig, args, eval_sets=...)` builds the config from the flags that were given,
the dataclass filling the rest; a dotted field (`http.per_host`, `image.min_side`) sets a field of a nested
config, starting from the outer field's own default. `FLAGS` lists every such flag for the test that holds
each flag to its field."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ConfigFlag:
    flag: str
    dest: str
    cls: type
    path: str  # the field, dotted for a nested config's field
    help: str  # as the command's --help shows it, the field's default at its end


FLAGS: list[ConfigFlag] = []


def field_default(cls: type, path: str) -> Any:
    """The default of `cls`'s field `path` (dotted: a nested config's field, from the outer default)."""
    head, _, rest = path.partition(".")
    f = {f.name: f for f in fields(cls)}.get(head)
    if f is None:
        raise AttributeError(f"{cls.__name__} has no field {head!r}")
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        raise AttributeError(f"{cls.__name__}.{head} has no default: give it as an argument, not a flag")
    # A nested field's default is that of the outer default instance (FetchConfig.http is IMAGE_HOSTS).
    for part in rest.split(".") if rest else ():
        value = getattr(value, part)
    return value


def config_flag(parser: argparse.ArgumentParser, flag: str, cls: type, path: str, help: str, **kwargs: Any):
    """Add `flag` for field `path` of `cls`: `type` from the default (a bool default False is a switch),
    `default` None (not given), the field's default in the help."""
    if "default" in kwargs:
        raise TypeError(f"{flag}: the default is {cls.__name__}.{path}'s, not the flag's")
    default = field_default(cls, path)
    if isinstance(default, bool):
        if default:
            raise TypeError(f"{flag}: a switch for {cls.__name__}.{path}, whose default is True, reads wrong")
        kwargs.setdefault("action", "store_true")
    elif kwargs.get("action") != "append" and "choices" not in kwargs and default is not None:
        kwargs.setdefault("type", type(default))
    shown = "" if isinstance(default, bool) or default in (None, (), []) else f" (default: {default})"
    action = parser.add_argument(flag, default=None, help=help + shown, **kwargs)
    entry = ConfigFlag(flag, action.dest, cls, path, action.help)
    if entry not in FLAGS:  # the parser is built once per `main` call
        FLAGS.append(entry)
    return action


def from_flags(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """`cls` built from `values` and the flags of `cls` given on this command line."""
    nested: dict[str, dict[str, Any]] = {}
    for f in FLAGS:
        given = getattr(args, f.dest, None) if f.cls is cls else None
        if given is None:
            continue
        if isinstance(field_default(cls, f.path), tuple) and isinstance(given, list):
            given = tuple(given)
        head, _, rest = f.path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = given
        else:
            values.setdefault(head, given)
    for head, changes in nested.items():
        values[head] = replace(values.get(head) or field_default(cls, head), **changes)
    return cls(**values)
