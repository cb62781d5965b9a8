import json
import sys
from pathlib import Path

import pytest

from flows.cli import main


def test_sql_formats(curated, capsys):
    home = str(curated.home)
    assert (
        main(
            [
                "--home",
                home,
                "sql",
                "select stage, count(*) n from stage_runs group by 1 order by 1",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert {r["stage"] for r in rows} >= {"ingest", "resolve", "fetch", "dedup", "shard"}
    assert main(["--home", home, "sql", "select 1 as a", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["a", "1"]


def test_bad_input_is_one_line_and_non_zero(curated, capsys):
    assert main(["--home", str(curated.home), "sql", "select * from no_such_table"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tol: error:")
    assert main(["--home", str(curated.home), "versions", "show", "nope"]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["--home", str(curated.home), "ingest", "inaturalist"])
    assert exc.value.code == 2


def test_versions_verify(curated, capsys):
    assert main(["--home", str(curated.home), "versions", "verify", "t1"]) == 0
    assert "match the manifest" in capsys.readouterr().out


def test_resolve_names_csv(world, tmp_path, capsys):
    import csv

    home = str(tmp_path / "home")
    assert main(["--home", home, "taxonomy", "load-backbone", str(world.backbone)]) == 0
    genus = world.planted["homonym_genus"]
    src = tmp_path / "names.csv"
    src.write_text(f"scientific_name,kingdom\n{genus},Plantae\n{genus},\nNonexistus fictus,\n")
    out = tmp_path / "out.csv"
    assert main(["--home", home, "taxonomy", "resolve-names", str(src), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["match_type"] for r in rows] == ["exact", "none", "none"]
    assert rows[0]["kingdom"] == "Plantae" and rows[0]["genus"] == genus
    assert "homonym" in rows[1]["reason"]


def test_ingest_since_is_a_gbif_filter(tmp_path, server, capsys):
    home = str(tmp_path / "home")
    args = [
        "--home",
        home,
        "ingest",
        "gbif",
        "--api-url",
        server.base_url,
        "--allow-private-hosts",
        "--limit",
        "5",
        "--since",
        "2025-01-31",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "--home",
                home,
                "sql",
                "select config from stage_runs where stage = 'ingest'",
                "--format",
                "json",
            ]
        )
        == 0
    )
    config = json.loads(json.loads(capsys.readouterr().out)[0]["config"])
    assert config["params"]["lastInterpreted"] == "2025-01-31,*"
    assert main(["--home", home, "ingest", "eol", "--since", "2025-01-31"]) == 1
    assert "supported for gbif" in capsys.readouterr().err
    assert main(["--home", home, "ingest", "gbif", "--since", "last tuesday"]) == 1


def test_every_argument_of_every_command_has_help():
    """`tol X --help` describes each argument (and shows its default where it has one)."""
    import argparse

    from flows.cli import build_parser

    def walk(parser, name):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")

    missing, commands = [], 0
    for name, parser in walk(build_parser(), "tol"):
        commands += 1
        assert parser.description or name == "tol", f"{name} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (action.help or "") or f"(default: {action.default})" in " ".join(
                    text.split()
                ), f"{name} {action.option_strings[0]} does not show its default"
    assert not missing, missing
    assert commands >= 20  # tol, its commands, and the recipe and taxonomy actions


def test_cli_logging_follows_stderr_when_it_is_replaced(monkeypatch):
    """`main` called twice in one process (tests, a notebook): the first call's stderr may be closed by the
    time a stage logs in the second; the records go to the stderr of the moment, with no logging error."""
    import io
    import logging

    from flows.cli import _logging

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _logging("INFO")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    _logging("INFO")
    logging.getLogger("tol.unit").info("stage said this")
    assert second.getvalue().count("stage said this") == 1


@pytest.mark.parametrize(
    ("argv", "cls", "required"),
    [
        (["fetch"], "etl.fetch.stage.FetchConfig", {}),
        (["dedup"], "etl.dedup.stage.DedupConfig", {}),
        (["compact"], "warehouse.compaction.CompactionConfig", {}),
        (["filter", "run"], "etl.filter.stage.FilterConfig", {}),
        (["shard", "--version", "v"], "etl.shards.stage.ShardConfig", {"version": "v"}),
        (["ingest", "gbif"], "etl.ingest.sources.IngestConfig", {"source": "gbif"}),
        (["fetch"], "flows.stages.ExecutorConfig", {}),
    ],
)
def test_a_command_without_flags_runs_its_configs_defaults(argv, cls, required):
    """A default is written once, in the config dataclass: no flag restates it."""
    import importlib

    from flows.cli import build_parser
    from flows.flags import from_flags

    module, name = cls.rsplit(".", 1)
    config = getattr(importlib.import_module(module), name)
    args = build_parser().parse_args(argv)
    assert from_flags(config, args, **required) == config(**required)


def test_every_config_flag_shows_its_fields_default():
    from flows.cli import build_parser
    from flows.flags import FLAGS, field_default

    build_parser()
    assert len(FLAGS) >= 40
    for flag in FLAGS:
        try:
            default = field_default(flag.cls, flag.path)
        except AttributeError:  # a required field: a positional or a required flag, no default to show
            continue
        if default not in (None, False, (), [], {}):
            assert flag.help.endswith(f"(default: {default})"), flag


def test_every_stage_command_is_built_from_the_stage_table_and_its_config_fields():
    """A field's help is written once, in its config; every such field of a stage's config is a flag of
    that stage's command, and the CLI declares no config flag by hand."""
    from dataclasses import fields, is_dataclass

    from flows.cli import build_parser
    from flows.flags import FLAGS
    from flows.stages import STAGES

    build_parser()
    for st in STAGES:

        def paths(cls, prefix=""):
            for f in fields(cls):
                if "flags" in f.metadata:
                    nested = (
                        f.default
                        if f.default_factory is __import__("dataclasses").MISSING
                        else f.default_factory()
                    )
                    assert is_dataclass(nested)
                    yield from paths(type(nested), prefix + f.name + ".")
                elif "help" in f.metadata:
                    yield prefix + f.name

        declared = set(paths(st.config))
        flagged = {f.path for f in FLAGS if f.cls is st.config}
        assert declared and declared == flagged, st.name
    text = (Path(__file__).parents[1] / "flows" / "cli.py").read_text()
    assert "config_flag(" not in text


def test_the_cli_restates_no_config_default():
    """No `add_argument` in the CLI carries a default that is also a config field's (the old 25 did)."""
    text = (Path(__file__).parents[1] / "flows" / "cli.py").read_text()
    for restated in (
        "default=6,",
        "default=1024",
        "default=224",
        "default=720",
        "default=0.05",
        "default=10_000",
        "default=60.0",
        "default=100_000_000",
        "default=0.02",
        "default=300,",
    ):
        assert restated not in text, restated  # fmt: skip


def test_the_non_stage_commands_show_their_functions_defaults():
    """A flag of a command that is not a stage takes its default from the function doing the work (or, for
    the demo, whose flow is not imported to build the parser, states it and is held to it here)."""
    from etl.dedup.query import query_images
    from flows.cli import build_parser
    from flows.commands import DemoArgs, DiffArgs, QueryArgs, ServeArgs
    from flows.demo import demo_flow
    from flows.flags import default_of, from_flags
    from flows.serve import serve
    from taxonomy.diff import taxonomy_diff

    p = build_parser()
    assert from_flags(DemoArgs, p.parse_args(["demo"])).seed == default_of(demo_flow, "seed")
    assert from_flags(QueryArgs, p.parse_args(["dedup", "query", "x.jpg"])).k == default_of(query_images, "k")
    diff = from_flags(DiffArgs, p.parse_args(["taxonomy", "diff", "a", "b"]))
    assert (diff.run_a, diff.run_b, diff.sample) == ("a", "b", default_of(taxonomy_diff, "sample"))
    served = from_flags(ServeArgs, p.parse_args(["serve"]))
    assert (served.port, served.host) == (default_of(serve, "port"), default_of(serve, "host"))
    predicted = p.parse_args(["predict", "x.jpg", "y.jpg", "--model", "m"])
    assert predicted.k is None  # not given: PredictConfig's own default applies
    assert from_flags(predicted.command_entry.config, predicted).images == ("x.jpg", "y.jpg")


def test_every_command_is_built_from_a_table_and_its_config_fields():
    """The CLI declares no argument: every field with a help of a command's config is an argument of that
    command, a positional where the field says so, and the commands' help ends with each field's default."""
    from dataclasses import fields

    from flows.cli import build_parser
    from flows.commands import COMMANDS
    from flows.flags import FLAGS

    build_parser()
    for c in COMMANDS:
        declared = {f.name for f in fields(c.config) if "help" in f.metadata}
        nested = {f.name for f in fields(c.config) if "flags" in f.metadata}
        flagged = {f.path.split(".")[0] for f in FLAGS if f.cls is c.config}
        assert flagged == declared | nested, c.name
    text = (Path(__file__).parents[1] / "flows" / "cli.py").read_text()
    assert text.count("add_argument(") == 3 + 2  # --home, --debug, --log-level; a stage's inputs and --full


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["versions", "show", "../etc"], "a name is never a path"),
        (["takedown", "add", "--record", "x'; DROP TABLE raw_records; --", "--reason", "r"], "record name"),
        (["filter", "build-support", "folder", "--model", "m", "--name", "../museum"], "support set name"),
        (["versions", "show"], "versions show needs a NAME"),
    ],
    ids=["version-path", "record-sql", "support-path", "missing-name"],
)
def test_a_table_commands_names_are_checked_as_they_are_parsed(tmp_path, capsys, argv, says):
    """A name given to a command of the table is a name, never a path or SQL: a usage error (exit 2),
    before anything opens the catalog."""
    try:
        code = main(["--home", str(tmp_path / "home"), *argv])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
