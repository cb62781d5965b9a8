"""Command-line flags taken from the stages' config dataclasses, so a default and its help are written once:
in the dataclass.

`add_config_flags(parser, FetchConfig)` adds one flag per field whose metadata has a `help`: named after the
field (`near_k` -> `--near-k`) unless the metadata names a `flag` (or says `positional`: an argument named
by the field, one word, or every word left for a tuple), typed from the annotation (`int | None`
-> int, a tuple -> a repeatable flag, a bool -> a switch), with the metadata's `choices` and `metavar`. A
field of a nested config whose metadata has `flags: PREFIX` contributes the nested class's own flags, each
named PREFIX + its field name (FilterConfig.faces, `flags: "face-"`: `--face-max-side`).

`config_flag(parser, "--near-k", DedupConfig, "near_k", "help")` adds a flag whose type is the field's and
whose default is the field's (shown in the help, never restated); the parsed value is None unless the flag
was given. `from_flags(DedupConfig, args, eval_sets=...)` builds the config from the flags that were given,
the dataclass filling the rest; a dotted field (`http.per_host`, `image.min_side`) sets a field of a nested
config, starting from the outer field's own default. `FLAGS` lists every such flag for the test that holds
each flag to its field."""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from typing import Any

from warehouse.contracts import check_name


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
    shown = "" if isinstance(default, bool) or default in (None, (), [], {}) else f" (default: {default})"
    action = parser.add_argument(flag, default=None, help=help + shown, **kwargs)
    _register(flag, action, cls, path)
    return action


def _register(flag: str, action: argparse.Action, cls: type, path: str) -> None:
    entry = ConfigFlag(flag, action.dest, cls, path, action.help)
    if entry not in FLAGS:  # the parser is built once per `main` call
        FLAGS.append(entry)


def kv_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """`KEY=VALUE` items as a dict; the keys are checked by whoever reads them (a config, a recipe)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _default_or_none(cls: type, path: str) -> Any:
    try:
        return field_default(cls, path)
    except AttributeError:  # a required field (IngestConfig.source): no default to shape the value by
        return None


def from_flags(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """`cls` built from `values` and the flags of `cls` given on this command line."""
    nested: dict[str, dict[str, Any]] = {}
    for f in FLAGS:
        given = getattr(args, f.dest, None) if f.cls is cls else None
        if given is None:
            continue
        default = _default_or_none(cls, f.path)
        if isinstance(default, dict) and isinstance(given, list):
            given = kv_pairs(given, f.flag)
        elif isinstance(given, list):  # a repeatable flag or a positional of several words: a tuple field
            given = tuple(given)
        head, _, rest = f.path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = given
        else:
            values.setdefault(head, given)
    for head, changes in nested.items():
        values[head] = replace(values.get(head) or field_default(cls, head), **changes)
    return cls(**values)


def default_of(fn: Callable[..., Any], parameter: str) -> Any:
    """The default of `fn`'s `parameter`, for a flag of a command that is not a stage: the function that
    does the work states it once, the flag repeats nothing."""
    value = inspect.signature(fn).parameters[parameter].default
    if value is inspect.Parameter.empty:
        raise TypeError(f"{fn.__name__}({parameter}) has no default")
    return value


def name_type(kind: str) -> Callable[[str], str]:
    """An argparse type that accepts a valid name of `kind` (warehouse.contracts.check_name), else a usage error."""

    def parse(value: str) -> str:
        try:
            return check_name(kind, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = f"{kind} name"
    return parse


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """(the element type argparse converts to, whether the flag repeats) for a field's annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return args[0], True
    return annotation, False


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    _root: type | None = None,
    _path: str = "",
    _prefix: str = "",
) -> None:
    """One flag per field of `cls` (and of its nested configs) whose metadata carries a `help`."""
    root = _root or cls
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        meta, path = f.metadata, _path + f.name
        if "flags" in meta:
            nested = hints[f.name]
            assert is_dataclass(nested), f"{cls.__name__}.{f.name}: `flags` on a field that is not a config"
            add_config_flags(parser, nested, _root=root, _path=path + ".", _prefix=meta["flags"])
            continue
        if "help" not in meta:
            continue
        kind, repeats = _flag_type(hints[f.name])
        kwargs: dict[str, Any] = {k: meta[k] for k in ("choices", "metavar", "type") if k in meta}
        if "name" in meta:  # a user's name (a version, a support set): checked as it is parsed, never a path
            kwargs["type"] = name_type(meta["name"])
        if "choices" in kwargs:
            kwargs["choices"] = list(kwargs["choices"])
        if typing.get_origin(kind) is dict:  # NAME=VALUE, repeatable; from_flags makes the dict
            kind, repeats = str, True
        if repeats:
            kwargs["action"] = "append"
        if kind is not bool:
            kwargs.setdefault("type", kind)
        flag = meta.get("flag") or "--" + _prefix + f.name.replace("_", "-")
        required = f.default is MISSING and f.default_factory is MISSING
        if meta.get("positional"):  # named by its field; a tuple takes every word left, else one (or none)
            flag = f.name
            if kwargs.pop("action", None) == "append":
                kwargs["nargs"] = "+" if required else "*"
            elif not required:
                kwargs["nargs"] = "?"
        elif required:
            kwargs["required"] = True
        if required:
            _register(flag, parser.add_argument(flag, help=meta["help"], **kwargs), root, path)
            continue
        config_flag(parser, flag, root, path, meta["help"], **kwargs)
