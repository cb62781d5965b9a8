"""`tol serve`: a local Prefect server (SQLite, 127.0.0.1) serving the deployments (scheduled ingestion,
curate, a `train` a user runs from the UI, evaluate); `tol deploy`: the same deployments registered to a work
pool on any Prefect server, for `prefect worker start` to run (the production path)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import requests

from flows.recipe import Recipe
from flows.trust import OperatorSettings, strip_parameters, strip_schema
from warehouse import writers
from warehouse.catalog import open_catalog

log = logging.getLogger("tol.serve")

DEPLOYMENTS = ("scheduled-ingest", "curate", "train", "evaluate")


def operator_settings(
    home: str, recipe: Recipe | None, allow_private_hosts: bool = False
) -> OperatorSettings:
    """The operator-only settings of served or deployed flows: the home, and what the recipe (the operator's
    file) says of private hosts, local roots and the Spark cluster. Runs get them through the environment."""
    spark = allow_private = local_roots = None
    if recipe is not None:
        c = recipe.spec.curate
        spark = c.executor.spark_master
        allow_private = c.fetch.allow_private_hosts or any(
            p.ingest.allow_private_hosts for p in recipe.spec.sources
        )
        local_roots = c.fetch.local_roots
    return OperatorSettings(
        home=str(Path(home).resolve()),
        spark_master=spark,
        allow_private_hosts=bool(allow_private_hosts or allow_private),
        local_roots=tuple(local_roots or ()),
    )


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str) -> None:
    """Serving beyond loopback needs Prefect's basic auth (`PREFECT_SERVER_API_AUTH_STRING`): the API starts
    flow runs on this machine, so whoever reaches it is an operator."""
    if host not in LOOPBACK and not os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        raise PermissionError(
            f"tol serve --host {host}: serving beyond loopback needs PREFECT_SERVER_API_AUTH_STRING "
            "(user:password, Prefect's basic auth); anyone who reaches the API can start runs"
        )


def _parameters(home: str, recipe: Recipe | None, training_slots: int) -> dict[str, dict[str, Any]]:
    """Each deployment's default parameters: what Quick run uses. A recipe fills them all, except the
    operator-only settings (`flows.trust`), which runs take from the environment instead."""
    params: dict[str, dict[str, Any]] = {name: {} for name in DEPLOYMENTS}
    params["train"].update(training_slots=training_slots)
    if recipe is None:
        return params
    sha = {"recipe_sha256": recipe.sha256}
    spec = recipe.spec
    params["scheduled-ingest"].update(pulls=[dataclasses.asdict(p) for p in spec.sources], **sha)
    curate = dataclasses.asdict(spec.curate)
    params["curate"].update({k: v for k, v in curate.items() if v is not None}, **sha)
    params["evaluate"].update(sha)
    params["train"].update(recipe.train_parameters(), **sha)
    if spec.evaluate.tasks:
        params["evaluate"].update(tasks=list(spec.evaluate.tasks), registry=spec.evaluate.registry)
    return {name: strip_parameters(p) for name, p in params.items()}


def _strip_form(deployment: Any) -> None:
    """Remove the operator-only fields from a deployment's form (its parameter schema)."""
    schema = deployment._parameter_openapi_schema
    doc = {"properties": schema.properties, "required": list(schema.required or [])}
    strip_schema(doc)
    schema.required = doc["required"]
    strip_schema(getattr(schema, "definitions", None) or {})


def build_deployments(
    home: str, recipe: Recipe | None = None, training_slots: int = 1, *, by_module: bool = False
) -> list:
    """The four deployments. Without a recipe the ingestion has no schedule and no pulls (it would not know
    what to pull); the train form offers the versions built so far (and `latest`) as choices. `by_module`
    names each flow by its module path (`flows.pipeline.train_flow`): what a worker with this package
    installed imports, with no code storage to pull from."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import curate_flow, evaluate_flow, ingest_flow, train_flow, version_choices

    home = str(Path(home).resolve())
    params = _parameters(home, recipe, training_slots)
    kind = {"entrypoint_type": EntrypointType.MODULE_PATH} if by_module else {}
    schedule = recipe.spec.schedule if recipe else None
    ingest = ingest_flow.to_deployment(
        name="scheduled-ingest",
        parameters=params["scheduled-ingest"],
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)] if schedule else None,
        description=(
            f"Recipe {recipe.spec.name}: {len(recipe.spec.sources)} pulls"
            + (f", at '{schedule.cron}' ({schedule.timezone})" if schedule else ", no schedule")
            if recipe
            else "No recipe: no schedule and no pulls (serve with --recipe FILE, or give `pulls`)"
        ),
        **kind,
    )
    # The form offers `latest` (the newest version when the run starts), the recipe's version and the
    # versions built so far as choices; each curate build and each training run refreshes the list on the
    # server (`flows.pipeline.refresh_train_choices`). The server does not enforce it (a version typed in the
    # form's JSON view is accepted); the flow checks the version exists.
    train = train_flow.to_deployment(
        name="train", parameters=params["train"], enforce_parameter_schema=False, **kind
    )
    planned = [recipe.spec.curate.shard.version] if recipe and recipe.spec.curate.shard else []
    choices = version_choices(open_catalog(home))
    enum = list(dict.fromkeys([*choices[:1], *planned, *choices[1:]]))
    train._parameter_openapi_schema.properties["dataset_version"]["enum"] = enum
    deployments = [
        ingest,
        curate_flow.to_deployment(name="curate", parameters=params["curate"], **kind),
        train,
        evaluate_flow.to_deployment(name="evaluate", parameters=params["evaluate"], **kind),
    ]
    for d in deployments:
        _strip_form(d)
    return deployments


def serve(
    home: str,
    port: int = 4200,
    recipe: Recipe | None = None,
    training_slots: int = 1,
    *,
    host: str = "127.0.0.1",
    allow_private_hosts: bool = False,
) -> None:
    """Start the server, wait for its health check, then serve the deployments until interrupted. The
    server binds `host` (loopback unless PREFECT_SERVER_API_AUTH_STRING is set: `check_bind`)."""
    check_bind(host)
    home_path = Path(home).resolve()
    settings = operator_settings(str(home_path), recipe, allow_private_hosts)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home_path / "prefect"),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        env=env,
    )
    api = f"http://127.0.0.1:{port}/api"
    if os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        # This process's own clients (and the runs it starts) authenticate like any other client.
        os.environ.setdefault("PREFECT_API_AUTH_STRING", os.environ["PREFECT_SERVER_API_AUTH_STRING"])
    # Flow runs started by this process inherit the environment: the operator-only settings travel there.
    os.environ.update(settings.to_env())
    try:
        _wait_healthy(api, server)
        # The flow runs this process starts inherit the environment; this process's own Prefect settings
        # were fixed when prefect was first imported (reading the recipe may have done it), so they are
        # set again for its clients: otherwise they would start a temporary server on the same database.
        os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": env["PREFECT_HOME"]})
        from prefect import serve as prefect_serve
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        if recipe is not None:
            _record_recipe(str(home_path), recipe)
        log.info(
            "Prefect UI: http://127.0.0.1:%d  (deployments: %s%s)",
            port,
            ", ".join(DEPLOYMENTS),
            f"; recipe {recipe.spec.name}, sha256 {recipe.sha256[:12]}" if recipe else "; no recipe",
        )
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_HOME: env["PREFECT_HOME"]}):
            prefect_serve(*build_deployments(str(home_path), recipe, training_slots))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_healthy(api: str, server: subprocess.Popen, seconds: int = 120) -> None:
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    credentials = tuple(auth.split(":", 1)) if auth and ":" in auth else None
    for _ in range(seconds):
        try:
            if requests.get(f"{api}/health", timeout=2, auth=credentials).ok:
                return
        except requests.RequestException:
            pass
        if server.poll() is not None:
            raise RuntimeError("the Prefect server exited during start-up")
        time.sleep(1)
    raise TimeoutError(f"the Prefect server did not answer within {seconds} s")


def _record_recipe(home: str, recipe: Recipe) -> None:
    writers.record_recipe(open_catalog(home), recipe.sha256, recipe.spec.name, recipe.path, recipe.text)


def deploy(
    home: str, pool: str, recipe: Recipe | None = None, training_slots: int = 1, create_pool: bool = True
) -> list[str]:
    """Register the deployments with the Prefect server at PREFECT_API_URL, to run on work pool `pool` (a
    `process` pool, created when missing and `create_pool`); returns their names. Workers started with
    `prefect worker start --pool POOL` on machines that see `home` and have this package installed run them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import deploy as prefect_deploy
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            if not create_pool:
                raise LookupError(
                    f"work pool {pool!r} does not exist (create it, or drop --no-create-pool)"
                ) from None
            with suppress(ObjectAlreadyExists):  # another deploy created it meanwhile
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    if recipe is not None:
        _record_recipe(home, recipe)
    deployments = build_deployments(home, recipe, training_slots, by_module=True)
    env = operator_settings(home, recipe).to_env()
    for d in deployments:
        # The workers' flow runs read the operator-only settings from this environment (`flows.trust`).
        d.job_variables = {
            **(d.job_variables or {}),
            "env": {**(d.job_variables or {}).get("env", {}), **env},
        }
    prefect_deploy(
        *deployments,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return [f"{d.flow_name}/{d.name}" for d in deployments]
