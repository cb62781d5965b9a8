"""The trust model's operator side: settings fixed by whoever serves or deploys the flows, never by a run form.

A run form (the Prefect UI's, or any client of the API) fills a flow's parameters. Some settings decide what
the process may touch rather than what it computes: the home folder, the Spark cluster that runs our code
and whose results we unpickle, whether private network addresses may be fetched, which local folders
`file://` URLs may read, scratch folders. Those are operator-only: `tol serve` and `tol deploy` fix them
from their flags and the recipe, pass them to every flow run through the environment (`TOL_*`), and drop
them from the deployments' forms. A flow run started by a deployment refuses a form that sets one to
anything but the operator's value. A direct call (the CLI, `tol recipe run`, tests) is the operator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from typing import Any

# The fields of any config (at any depth) that a run form may not set.
OPERATOR_ONLY = frozenset({"home", "work_dir", "spark_master", "allow_private_hosts", "local_roots"})

_ENV = {
    "home": "TOL_HOME",
    "spark_master": "TOL_SPARK_MASTER",
    "allow_private_hosts": "TOL_ALLOW_PRIVATE_HOSTS",
    "local_roots": "TOL_LOCAL_ROOTS",
}


class OperatorOnlyError(PermissionError):
    """A run form set an operator-only setting."""


@dataclass(frozen=True)
class OperatorSettings:
    home: str | None = None
    spark_master: str | None = None
    allow_private_hosts: bool = False
    local_roots: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        roots = env.get(_ENV["local_roots"], "")
        return cls(
            home=env.get(_ENV["home"]) or None,
            spark_master=env.get(_ENV["spark_master"]) or None,
            allow_private_hosts=env.get(_ENV["allow_private_hosts"], "") == "1",
            local_roots=tuple(r for r in roots.split(os.pathsep) if r),
        )

    def to_env(self) -> dict[str, str]:
        """The environment a flow run needs to see these settings (`from_env` reads it back)."""
        env = {
            _ENV["allow_private_hosts"]: "1" if self.allow_private_hosts else "0",
            _ENV["local_roots"]: os.pathsep.join(self.local_roots),
        }
        if self.home:
            env[_ENV["home"]] = self.home
        if self.spark_master:
            env[_ENV["spark_master"]] = self.spark_master
        return env


def under_deployment() -> bool:
    """Whether this flow run was started from a deployment (a form or a schedule), not called directly."""
    from prefect.runtime import deployment

    return bool(deployment.id)


def enforce(value: Any, settings: OperatorSettings, where: str = "") -> Any:
    """`value` (a config dataclass, a list or dict of them, or a plain value) with every operator-only field
    set to the operator's value; a field the form set to anything else (its default aside) is refused."""
    if is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in fields(value):
            current = getattr(value, f.name)
            path = f"{where}.{f.name}" if where else f.name
            if f.name in OPERATOR_ONLY:
                wanted = getattr(settings, f.name, None)
                if f.default is not MISSING:
                    default = f.default
                elif f.default_factory is not MISSING:
                    default = f.default_factory()
                else:
                    default = None
                if current != default and current != wanted:
                    raise OperatorOnlyError(
                        f"{path} is an operator setting, fixed when the flows are served or deployed; a run "
                        "form cannot set it (see the README's trust model)"
                    )
                if current != wanted:
                    changes[f.name] = tuple(wanted) if isinstance(wanted, list) else wanted
            else:
                inner = enforce(current, settings, path)
                if inner is not current:
                    changes[f.name] = inner
        return replace(value, **changes) if changes else value
    if isinstance(value, list | tuple):
        out = [enforce(v, settings, f"{where}[{i}]") for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(out, value, strict=True)) else type(value)(out)
    return value


def operator_home(home: str | None) -> str:
    """The home a flow works on: under a deployment the operator's (a form's other `home` is refused);
    called directly, the one given (default `tol-data`)."""
    if not under_deployment():
        return home or OperatorSettings.from_env().home or "tol-data"
    fixed = OperatorSettings.from_env().home
    if fixed is None:
        raise OperatorOnlyError(
            "this deployment has no operator home (TOL_HOME): serve or deploy it with tol"
        )
    if home not in (None, fixed):
        raise OperatorOnlyError("home is an operator setting, fixed when the flows are served or deployed")
    return fixed


def form_configs(**configs: Any) -> dict[str, Any]:
    """The configs a flow received, with operator-only fields enforced when a deployment started it."""
    if not under_deployment():
        return configs
    settings = OperatorSettings.from_env()
    return {name: enforce(value, settings, name) for name, value in configs.items()}


def strip_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A deployment's parameter schema without the operator-only properties (at any depth, definitions
    included): the form never shows them."""
    if isinstance(schema, dict):
        if isinstance(schema.get("default"), dict | list):  # a config's default, shown in the form
            schema["default"] = strip_parameters(schema["default"])
        props = schema.get("properties")
        if isinstance(props, dict):
            for name in OPERATOR_ONLY & set(props):
                del props[name]
            if isinstance(schema.get("required"), list):
                schema["required"] = [r for r in schema["required"] if r not in OPERATOR_ONLY]
        for value in schema.values():
            strip_schema(value)
    elif isinstance(schema, list):
        for value in schema:
            strip_schema(value)
    return schema


def strip_parameters(value: Any) -> Any:
    """Deployment default parameters (plain JSON) without operator-only keys, at any depth."""
    if isinstance(value, dict):
        return {k: strip_parameters(v) for k, v in value.items() if k not in OPERATOR_ONLY}
    if isinstance(value, list):
        return [strip_parameters(v) for v in value]
    return value
