"""The ``report`` and ``quantify`` commands: the HTML report, organ and region volumes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    EXIT_OK,
    _add_protocol_argument,
    _note_replacing,
    _output_folder,
    _resolved_protocol,
)


def _add_report_parser(commands) -> None:
    """The ``report`` subcommand."""
    report = commands.add_parser(
        "report",
        help="an HTML page with the ranking, stability, significance, per-organ and resource figures",
        description="Build DIR/index.html (figures in DIR/figures as PNG and SVG) from a results.csv or from a "
        "folder written by evaluate (results.csv, ranking/, runs/, quantify/). Sections whose inputs are "
        "absent are left out with a note.",
    )
    report.add_argument("source", type=Path, help="results.csv, or a folder written by evaluate")
    report.add_argument("--out", type=_output_folder, required=True, help="report folder")
    report.add_argument("--ranking", type=Path, default=None, help="ranking folder (default: SOURCE/ranking)")
    report.add_argument("--runs", type=Path, default=None, help="runs folder (default: SOURCE/runs)")
    report.add_argument("--quantify", type=Path, default=None, help="quantify folder (default: SOURCE/quantify)")
    report.add_argument("--cohorts", type=Path, default=None, help="cohorts folder (default: SOURCE/cohorts)")
    report.add_argument("--compare", type=Path, default=None, help="compare folder (default: SOURCE/compare)")
    report.add_argument("--team", default=None, help="team whose resources over time are shown (default: the best)")
    report.add_argument("--case", default=None, help="case whose resources over time are shown (default: the first)")
    report.add_argument("--pdf", action="store_true",
                        help="also write OUT/report.pdf, the page printed by headless Chromium (no LaTeX)")
    report.add_argument("--paper", choices=("letter", "a4"), default="letter",
                        help="paper size of the PDF (default: letter)")
    report.add_argument("--title", default="Evaluation report", help="the page's title and heading")
    report.add_argument("--display-names", type=Path, default=None, metavar="CSV",
                        help="CSV with columns team, name: the name shown for each team everywhere on the page "
                        "(to anonymise, or to spell teams properly)")
    report.add_argument("--include-logs", action="store_true",
                        help="copy the failed cases' logs into OUT/logs and link them (default: the failure table "
                        "names each log's path and links nothing outside OUT)")
    report.add_argument("--single-file", action="store_true",
                        help="embed the figures in index.html (one file to mail or upload)")
    _add_protocol_argument(report)
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ..pipeline import report

    _note_replacing(args.out, "index.html")
    source_folder = args.source if args.source.is_dir() else args.source.parent
    _resolved_protocol(args, source_folder, args.ranking or source_folder / "ranking",
                       args.runs or source_folder / "runs")
    display_names = None
    if args.display_names is not None:
        from ..io import read_table

        table = read_table(args.display_names, role="display names table")
        if not {"team", "name"} <= set(table.columns):
            raise ValueError(f"display names table {args.display_names} needs columns team and name, has "
                             f"{list(table.columns)}")
        display_names = dict(zip(table["team"].astype(str), table["name"].astype(str)))
    index = report(args.source, args.out, args.protocol, ranking_dir=args.ranking, runs_dir=args.runs,
                   quantify_dir=args.quantify, cohorts_dir=args.cohorts, compare_dir=args.compare,
                   team=args.team, case=args.case, pdf=args.pdf, title=args.title, display_names=display_names,
                   include_logs=args.include_logs, single_file=args.single_file, paper=args.paper)
    print(f"wrote {index}" + (f" and {index.parent / 'report.pdf'}" if args.pdf else ""))
    return EXIT_OK


def _add_quantify_parser(commands) -> None:
    """The ``quantify`` subcommand."""
    quantify = commands.add_parser(
        "quantify",
        help="organ volumes (and tubular organ diameters), against ground truth when given",
        description="Measure every protocol organ of every label map in PRED: volume in mL (voxel count x voxel "
        "volume) and, for aorta, IVC and esophagus, the median equal-area-circle diameter of the axial "
        "cross-sections in mm. With GT: Pearson r, mean difference and Bland-Altman limits per organ. Writes "
        "OUT/volumes.csv, OUT/volume_summary.csv and OUT/agreement.csv.",
    )
    quantify.add_argument("pred", type=Path, help="folder of predicted label maps")
    quantify.add_argument("gt", type=Path, nargs="?", default=None, help="folder of ground-truth label maps")
    quantify.add_argument("--out", type=_output_folder, required=True, help="output folder")
    quantify.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_protocol_argument(quantify)
    quantify.set_defaults(handler=_quantify)


def _quantify(args: argparse.Namespace) -> int:
    from ..pipeline import quantify

    _note_replacing(args.out, "volumes.csv")
    outputs = quantify(args.pred, args.gt, args.out, _resolved_protocol(args),
                       progress=False if args.no_progress else None)
    if outputs.agreement is not None:
        print(outputs.agreement.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        from ..protocol import layout_of_table

        unit = layout_of_table(outputs.summary.columns).name_column
        table = outputs.summary[[unit, "n", "text"]].rename(columns={"text": "volume_ml median (Q1, Q3)"})
        print(table.to_string(index=False))
    print(f"wrote {outputs.folder}/volumes.csv, volume_summary.csv" +
          (", agreement.csv" if outputs.agreement is not None else ""))
    return EXIT_OK
