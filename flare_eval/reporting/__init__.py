"""The report: figures (:mod:`~flare_eval.reporting.plots`, usable in notebooks) and the page
(:mod:`~flare_eval.reporting.html`)."""

from .html import ReportInputs, build_report, find_report_inputs

__all__ = ["ReportInputs", "build_report", "find_report_inputs"]
