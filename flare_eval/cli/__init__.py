"""The ``flare-eval`` command: parses arguments, calls the Python API, prints, exits.

One module per group of commands (``scoring``: score, collect; ``ranking``: rank;
``containers``: run-containers, evaluate, gpu-check; ``reports``: report, quantify;
``analysis``: cohorts, compare, review), each with a small parser function per
command; ``_common`` holds what they share.

Exit codes: 0 success, 1 finished with problems worth attention (e.g. missing
predictions, invalid submissions), 2 bad input (unreadable ground truth, bad
arguments, bad tables, an output folder that another command is writing, a file
or folder this user may not write or read) or a full disk, 130 interrupted
(Ctrl-C); the last two keep every finished case, and the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import sys
import warnings
from collections.abc import Sequence

from .._version import __version__
from ..errors import FolderInUseError
from . import analysis, containers, ranking, reports, scoring
from ._common import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS

__all__ = [
    "main", "command", "build_parser",
    "EXIT_OK", "EXIT_PROBLEMS", "EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flare-eval`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="flare-eval",
        description="Evaluate and rank segmentation algorithms the way the FLARE challenges did.",
        epilog="exit codes: 0 success; 1 finished, but some cases had problems (missing or invalid "
        "predictions, failed containers, invalid submissions; listed on stderr); 2 bad input or arguments, or a "
        "full disk; 3 an internal error (one line on stderr, the traceback in a file it names); 130 interrupted "
        "(finished cases are kept: rerun to resume). A closed stdout (| head) ends the output quietly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    scoring._add_score_parser(commands)
    ranking._add_rank_parser(commands)
    containers._add_run_containers_parser(commands)
    scoring._add_collect_parser(commands)
    containers._add_evaluate_parser(commands)
    containers._add_gpu_check_parser(commands)
    reports._add_report_parser(commands)
    reports._add_quantify_parser(commands)
    analysis._add_cohorts_parser(commands)
    analysis._add_compare_parser(commands)
    analysis._add_review_parser(commands)
    commands.add_parser("protocols", help="list the protocol presets").set_defaults(handler=_protocols)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flare-eval`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return args.handler(args)
        except (ValueError, FileNotFoundError, FolderInUseError, _container_error()) as exc:
            print(f"flare-eval {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"flare-eval {args.command}: interrupted; every finished case is kept: run the same command "
                  "again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader of stdout has gone (| head): say nothing more, and let no flush at exit complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
                # Another user's folder, a read-only mount: the user's to mend, not a bug.
                print(f"flare-eval {args.command}: error: {exc.filename}: {exc.strerror}; every finished case is "
                      "kept: give a place this user may write (or read) and run the same command again",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return _internal_error(args.command, exc)
            where = os.path.dirname(exc.filename) if exc.filename else "the output folder"
            print(f"flare-eval {args.command}: error: no space left on the disk of {where}; every finished case "
                  "is kept: free some space and run the same command again to resume", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Exception as exc:  # a bug: one line, never a traceback on the terminal
            return _internal_error(args.command, exc)


def command() -> int:
    """Entry point of the installed ``flare-eval`` script and of ``python -m flare_eval``: `main`, then exit.

    Only for a process that ends when the command does (`main` is the one to call from Python).
    """
    code = main()
    # The process ends next. Its last collection would walk every object the command created (a sixth of a
    # second after pandas was loaded) only to free memory that the exit frees anyway; frozen objects are
    # skipped. Nothing is lost: outputs are written and closed by then, and atexit handlers still run.
    gc.freeze()
    return code


def _internal_error(command: str, exc: BaseException) -> int:
    """Write the traceback to a file, say in one line what went wrong and where the traceback is."""
    import tempfile
    import time
    import traceback

    handle, path = tempfile.mkstemp(prefix=f"flare-eval-{command}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".traceback.txt")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(f"flare-eval {__version__}, command {command}, argv {sys.argv!r}\n")
        out.write("".join(traceback.format_exception(exc)))
    print(f"flare-eval {command}: internal error: {type(exc).__name__}: {exc} (a bug in flare-eval; the "
          f"traceback is in {path}: please report it)", file=sys.stderr)
    return EXIT_INTERNAL


def _container_error() -> type[Exception]:
    from ..harness.docker import ContainerError

    return ContainerError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _protocols(args: argparse.Namespace) -> int:
    from ..protocol import available_protocols, load_protocol

    for name in available_protocols():
        protocol = load_protocol(name)
        print(f"{name}: {protocol.description}")
    return EXIT_OK
