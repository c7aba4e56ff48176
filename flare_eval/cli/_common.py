"""What every command shares: exit codes, argument types, the protocol option, notes and failure lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..layout import log_path

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
#: An unexpected error inside flare-eval (a bug): one line on stderr, the traceback in a file.
EXIT_INTERNAL = 3
#: As a shell reports a command ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _non_negative_int(text: str) -> int:
    """An argparse type; argparse names the option in the message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type; argparse names the option in the message."""
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _output_folder(text: str) -> Path:
    """An argparse type: a folder to write into (created if needed), refused if a file stands in its way."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: give the folder to write into (it is "
                                         "created if needed)")
    _check_parents(path, text)
    return path


def _output_file(text: str) -> Path:
    """An argparse type: a file to write (its folder created if needed), refused if it is a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give the file to write, e.g. {path / 'results.csv'}")
    _check_parents(path, text)
    return path


def _check_parents(path: Path, text: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            return


def _note_replacing(folder: Path | None, *names: str) -> None:
    """Say in one line when a command is about to replace outputs of an earlier run."""
    if folder is not None and any((Path(folder) / name).exists() for name in names):
        print(f"note: replacing the earlier outputs in {folder}", file=sys.stderr)


def _add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    from ..protocol import available_protocols

    parser.add_argument(
        "--protocol",
        default=None,
        help=f"preset ({', '.join(available_protocols())}) or path of a protocol JSON file (default: the one "
        "recorded in the settings.json of the folders this command reads or writes, else flare22; one that "
        "differs from a recorded one is refused)",
    )


def _resolved_protocol(args: argparse.Namespace, *places):
    """The command's protocol (given, else recorded in the settings.json of ``places``); kept in ``args``."""
    from ..protocol import resolve_protocol

    args.protocol = resolve_protocol(args.protocol, *places)
    return args.protocol


def _add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on this Dask scheduler (e.g. tcp://host:8786) instead of local processes")
    parser.add_argument("--ship", choices=("auto", "paths", "bytes"), default="auto",
                        help="how files reach Dask workers: paths (shared file system), bytes, or auto: paths "
                        "when every worker can read them (default)")


def _print_failed_cases(rows, runs_dir: Path) -> None:
    """One line per (team, case) that did not end ok, on stderr: its status, exit code if any, and its log."""
    import pandas as pd

    for row in rows.itertuples():
        code = getattr(row, "exit_code", None)
        exit_code = "" if code is None or pd.isna(code) else f", exit code {int(code)}"
        print(f"{row.team} {row.case}: {row.status}{exit_code}; log: {log_path(runs_dir / row.team, row.case)}",
              file=sys.stderr)
