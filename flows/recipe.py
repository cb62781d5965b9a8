"""A corpus recipe: one YAML file that says what to pull, how to curate it, which version to build, how to
train and evaluate on it, and when to run the ingestion.

The file is read in three passes, each with errors that name the line: `${NAME}` variables are filled (from
`variables`, then the environment), unknown keys are refused (a misspelt setting is never ignored), and the
values are checked against the stages' own config dataclasses (the same checks a stage makes when it starts),
so a recipe that validates is one the stages accept. `sample_world/recipe.yaml` is a complete example."""

from __future__ import annotations

import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from etl.ingest.sources import IngestConfig, default_api
from flows.stages import CurateConfig
from training.config import load_config
from warehouse.contracts import check_name

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RecipeError(ValueError):
    """A recipe that cannot be used; `problems` are `FILE:LINE: where: what` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Schedule:
    """When the scheduled ingestion runs: a cron expression read in `timezone` (an IANA name)."""

    cron: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=self.cron, timezone=self.timezone)  # Prefect's own checks, before any run


@dataclass(frozen=True)
class SourcePull:
    """One ingestion task: a source and its query (`ingest`), named for what it pulls, with its own retries."""

    name: str
    ingest: IngestConfig
    retries: int = 2
    retry_delay_seconds: float = 10.0

    def __post_init__(self) -> None:
        check_name("source pull", self.name)
        if self.retries < 0 or self.retry_delay_seconds < 0:
            raise ValueError("retries and retry_delay_seconds must be >= 0")

    @property
    def host(self) -> str:
        """The host this pull talks to (its concurrency tag, in task names): host[:port] alone, never a URL's
        user or password; `local` for files."""
        if self.ingest.path and not self.ingest.api_url:
            return "local"
        parts = urlsplit(self.ingest.api_url or default_api(self.ingest.source) or "")
        if not parts.hostname:
            return "local"
        return parts.hostname + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class EvaluateSettings:
    """Registered evaluation tasks run after each training run (none: the version's held-out split)."""

    tasks: tuple[str, ...] = ()
    registry: str | None = None


@dataclass(frozen=True)
class RecipeSpec:
    """The recipe's content, as validated. `train` holds TrainConfig keys (and `preset`)."""

    name: str
    sources: tuple[SourcePull, ...] = ()
    curate: CurateConfig = field(default_factory=CurateConfig)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    schedule: Schedule | None = None
    variables: tuple[str, ...] = ()  # the `${NAME}` variables the recipe may use (none other is filled)

    def __post_init__(self) -> None:
        check_name("recipe", self.name)
        names = [p.name for p in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source pull names must be unique: {', '.join(twice)} appear twice")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe with the text it was read from (variables filled) and that text's sha256."""

    spec: RecipeSpec
    path: str
    text: str
    sha256: str

    def train_parameters(self) -> dict[str, Any]:
        """The `train` flow's parameters this recipe implies (its version unless it names another)."""
        train = dict(self.spec.train)
        params: dict[str, Any] = {"preset": train.pop("preset", "cpu-tiny")}
        version = train.pop("dataset_version", None) or (
            self.spec.curate.shard.version if self.spec.curate.shard else None
        )
        if version:
            params["dataset_version"] = version
        params["overrides"] = train
        params["evaluate_tasks"] = list(self.spec.evaluate.tasks)
        params["registry"] = self.spec.evaluate.registry
        return params


def load_recipe(path: str | Path, variables: Mapping[str, str] | None = None) -> Recipe:
    """Read and validate a recipe; RecipeError lists every problem found, each with its line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"{path}: no such recipe file"])
    raw = path.read_text(encoding="utf-8")
    declared = _declared(raw, str(path))
    given = {**{k: v for k, v in os.environ.items() if k in declared}, **(variables or {})}
    text = _fill(raw, str(path), given, declared)
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise RecipeError([f"{path}:1: a recipe is a mapping with at least `name`"])
    problems = [
        f"{path}:{_line(root, loc)}: {_where(loc)}: {msg}" for loc, msg in _unknown_keys(data, RecipeSpec, ())
    ]
    seen: set[str] = set()
    for i, pull in enumerate(data.get("sources") or []):
        name = pull.get("name") if isinstance(pull, dict) else None
        if isinstance(name, str) and name in seen:
            loc = ("sources", i, "name")
            problems.append(f"{path}:{_line(root, loc)}: {_where(loc)}: {name!r} names an earlier pull too")
        seen.add(name)
    if problems:
        raise RecipeError(problems)
    spec = _validate(data, root, str(path))
    _check_train(spec, root, str(path))
    # Stored and hashed as written: the values of its variables (paths, perhaps secrets) are not kept.
    return Recipe(spec, str(path), raw, hashlib.sha256(raw.encode()).hexdigest())


def _declared(raw: str, path: str) -> frozenset[str]:
    """The names under the recipe's top-level `variables:` (read before anything is filled)."""
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return frozenset()  # reported with its line once the text is parsed properly
    names = data.get("variables") if isinstance(data, dict) else None
    if names is None:
        return frozenset()
    if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        raise RecipeError([f"{path}: variables: a list of names (letters, digits, _), e.g. [DATA_ROOT]"])
    return frozenset(names)


def _fill(text: str, path: str, variables: Mapping[str, str], declared: frozenset[str]) -> str:
    problems = []

    def sub(m: re.Match) -> str:
        name = m.group(1)
        line = text.count("\n", 0, m.start()) + 1
        if name not in declared:
            problems.append(
                f"{path}:{line}: ${{{name}}} is not declared: list it under `variables:` (only declared "
                "variables are filled)"
            )
        elif name in variables:
            return variables[name]
        else:
            problems.append(f"{path}:{line}: ${{{name}}} is not set (pass --var {name}=VALUE)")
        return m.group(0)

    out = _VAR.sub(sub, text)
    if problems:
        raise RecipeError(problems)
    return out


def _validate(data: dict[str, Any], root: yaml.Node, path: str) -> RecipeSpec:
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(RecipeSpec).validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{_line(root, loc)}: {_where(loc) or 'recipe'}: {msg}")
        raise RecipeError(problems) from None


def _check_train(spec: RecipeSpec, root: yaml.Node, path: str) -> None:
    """The train section through the trainer's own loader (preset, then keys): what `tol train` would say."""
    train = dict(spec.train)
    preset = train.pop("preset", "cpu-tiny")
    try:
        load_config(preset=preset, overrides=train)
    except (ValueError, TypeError) as exc:
        raise RecipeError([f"{path}:{_line(root, ('train',))}: train: {exc}"]) from None


def _hints(cls: type) -> dict[str, Any]:
    module = __import__(cls.__module__, fromlist=["_"])
    return typing.get_type_hints(cls, vars(module))


def _unknown_keys(value: Any, typ: Any, loc: tuple) -> list[tuple[tuple, str]]:
    """Keys of `value` that the dataclass `typ` (recursively) has no field for."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(typ) if a is not type(None)]
        return _unknown_keys(value, found[0], loc) if len(found) == 1 else []
    if origin in (tuple, list) and isinstance(value, list):
        inner = typing.get_args(typ)[0]
        return [p for i, v in enumerate(value) for p in _unknown_keys(v, inner, (*loc, i))]
    if not (is_dataclass(typ) and isinstance(value, dict)):
        return []
    hints = _hints(typ)
    known = {f.name for f in fields(typ)}
    out = []
    for key, v in value.items():
        if key not in known:
            out.append(((*loc, key), f"unknown key; known: {', '.join(sorted(known))}"))
        else:
            out.extend(_unknown_keys(v, hints[key], (*loc, key)))
    return out


def _where(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _line(node: yaml.Node | None, loc: tuple) -> int:
    """The 1-based line of the deepest node along `loc` that exists (the key's line for a mapping entry)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def plan(recipe: Recipe, catalog: Any | None = None) -> list[str]:
    """What `tol recipe run` would pull and build, without pulling: lines a person reads. With a catalog,
    each pull says whether it resumes from a checkpoint and the version whether it exists already."""
    spec = recipe.spec
    out = [f"recipe {spec.name} ({recipe.path}, sha256 {recipe.sha256[:12]})", "", "pull:"]
    checkpoints = {}
    if catalog is not None and catalog.db_path.exists():
        rows = catalog.query_arrow("SELECT source, query_key, complete FROM ingest_checkpoints").to_pylist()
        checkpoints = {(r["source"], r["query_key"]): r["complete"] for r in rows}
    for p in spec.sources:
        cfg = p.ingest
        where = cfg.path or cfg.api_url or f"{default_api(cfg.source)} (the real service)"
        query = ", ".join(f"{k}={v}" for k, v in sorted(cfg.params.items())) or "no filter"
        state = checkpoints.get((cfg.source, cfg.query_key()))
        since = {None: "first pull", True: "pulled before: re-reads, adds new or changed"}.get(
            state, "resumes from its checkpoint"
        )
        limit = f", at most {cfg.limit} records" if cfg.limit else ""
        out.append(
            f"  {p.name:<18} {cfg.source:<10} {where}  [{query}{limit}]  host {p.host}, "
            f"{p.retries} retries; {since}"
        )
    if not spec.sources:
        out.append("  (nothing: the recipe has no sources)")
    c = spec.curate
    out += [
        "",
        "curate:",
        f"  backbone   {c.backbone_path or 'the latest loaded'}",
        f"  fetch      {c.fetch.http.per_host} requests at once per host, {c.fetch.http.host_rate}/s to start, "
        f"min side {c.fetch.image.min_side}, max side {c.fetch.image.max_side}, "
        f"private hosts {'allowed' if c.fetch.allow_private_hosts else 'refused'}, "
        f"opt-outs honoured: {', '.join(c.fetch.honour) or 'none'}",
        f"  dedup      near_k {c.dedup.near_k}, leak_k {c.dedup.leak_k}, evaluation sets: "
        + (", ".join(f"{k}={v}" for k, v in c.dedup.eval_sets.items()) or "none"),
        "  filter     "
        + (
            f"scorers {', '.join(c.filter.scorers)} on {c.filter.device}"
            if c.filter
            else "none (no content scores)"
        ),
        f"  executor   {c.executor.name} x {c.executor.workers}",
    ]
    if c.shard is None:
        out.append("  version    none (no shard section: curation stops after dedup)")
    else:
        exists = ""
        if catalog is not None and catalog.db_path.exists():
            n = catalog.query_arrow(
                "SELECT count(*) AS n FROM dataset_versions WHERE version = ?", [c.shard.version]
            ).to_pylist()[0]["n"]
            if n:
                exists = "; exists: " + (
                    "rebuilt (overwrite)" if c.shard.overwrite else "the build will refuse"
                )
        out.append(
            f"  version    {c.shard.version} where {c.shard.where or 'every kept image'}, "
            f"{c.shard.samples_per_shard} samples per shard, val fraction {c.shard.val_fraction}{exists}"
        )
        rules = [r.as_text() for r in c.shard.filters]
        out.append(f"  thresholds {', '.join(rules) if rules else 'none (no sample is left out by a score)'}")
    tp = recipe.train_parameters()
    out += [
        "",
        "train:",
        f"  preset {tp['preset']} on {tp.get('dataset_version') or 'the latest version'}, "
        + (", ".join(f"{k}={v}" for k, v in tp["overrides"].items()) or "preset defaults"),
        "  replay   "
        + (
            f"from {tp['overrides']['replay_path']}"
            if tp["overrides"].get("replay_path")
            else "off (no replay_path: the train flow trains without replay)"
        ),
        "  evaluate " + (", ".join(spec.evaluate.tasks) or "nothing (no tasks)"),
        "",
        "schedule: "
        + (f"ingest at cron '{spec.schedule.cron}' in {spec.schedule.timezone}" if spec.schedule else "none"),
    ]
    return out
