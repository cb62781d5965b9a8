"""`tol`: the thin command line over the stage table (`flows.stages.STAGES`) and the command table
(`flows.commands.COMMANDS`). It declares no argument of its own beyond `--home`, `--debug` and `--log-level`:
every flag, its help and its default come from a config's fields. Each command exits non-zero with a one-line
reason on bad input (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from flows.commands import COMMANDS, GROUPS, UsageError
from flows.flags import add_config_flags, from_flags
from flows.stages import INPUTS, STAGES, ExecutorConfig, Stage
from warehouse.catalog import open_catalog


def run_stage(args: argparse.Namespace) -> None:
    """A stage of `stages.STAGES`: its config from its flags, the runs it reads, its executor."""
    st: Stage = args.stage
    inputs = {name: getattr(args, name) for name in st.inputs} | ({"full": args.full} if st.full else {})
    executor = from_flags(ExecutorConfig, args) if st.executor else None
    summary = st.run(open_catalog(args.home), from_flags(st.config, args), inputs, executor, progress=True)
    print(json.dumps(summary, indent=1, default=str))


def run_command(args: argparse.Namespace) -> None:
    args.command_entry.run(args.home, from_flags(args.command_entry.config, args))


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends with the default, unless there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Every command from the two tables: a stage's flags from its config, its inputs and its executor; a
    command's from its config. Two-word names (`filter run`, `taxonomy diff`) are actions of a group, which
    may itself be a command (`dedup`, whose `query` is optional)."""
    fmt = _DefaultsHelp
    p = argparse.ArgumentParser(
        prog="tol", description="TreeOfLife curation pipeline and BioCLIP 2 training", formatter_class=fmt
    )
    p.add_argument(
        "--home", default=os.environ.get("TOL_HOME", "tol-data"), help="catalog home folder (or TOL_HOME)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--log-level",
        default=os.environ.get("TOL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stage logs on stderr (or TOL_LOG_LEVEL)",
    )
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers: dict[str, argparse.ArgumentParser] = {}
    actions: dict[str, argparse._SubParsersAction] = {}

    def add(words: list[str], help: str, description: str = "") -> argparse.ArgumentParser:
        if len(words) == 1:
            where = top
        else:
            group = words[0]
            if group not in parsers:  # a group with nothing of its own to run
                add([group], GROUPS[group])
            if group not in actions:
                actions[group] = parsers[group].add_subparsers(
                    dest=f"{group}_cmd", required=group in GROUPS, metavar="ACTION"
                )
            where = actions[group]
        s = where.add_parser(words[-1], help=help, description=description or help, formatter_class=fmt)
        parsers[" ".join(words)] = s
        return s

    entries = [(st.command or st.name, st) for st in STAGES] + [(c.name, c) for c in COMMANDS]
    for name, entry in sorted(entries, key=lambda e: len(e[0].split())):  # groups before their actions
        if isinstance(entry, Stage):
            s = add(name.split(), entry.help)
            s.set_defaults(fn=run_stage, stage=entry)
            add_config_flags(s, entry.config)
            for inp in entry.inputs:
                s.add_argument("--" + inp.replace("_", "-"), help=INPUTS[inp])
            if entry.full:
                s.add_argument("--full", action="store_true", help=entry.full)
            if entry.executor:
                add_config_flags(s, ExecutorConfig)
        else:
            s = add(name.split(), entry.help, entry.description)
            s.set_defaults(fn=run_command, command_entry=entry)
            add_config_flags(s, entry.config)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a record comes, not as it was when the handler was made: `main`
    may run again in one process with stderr replaced (a test's capture, a caller's redirect), and the
    stream of an earlier call may be closed by then."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _logging(level: str) -> None:
    """The stages' loggers (`tol.<stage>`) on stderr; stdout stays the command's result."""
    logger = logging.getLogger("tol")
    logger.setLevel(level)
    logger.propagate = False  # printed once, here; not again by handlers others put on the root logger
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.log_level)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except UsageError as exc:
        print(f"tol: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"tol: error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
