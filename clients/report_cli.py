"""``cowsim report DIR``: a sweep's directory rendered as one self-contained HTML page.

Reads what ``cowsim sweep`` wrote into DIR (sweep.json, summary.parquet, runs.parquet,
failures.json) and writes DIR/report.html (:mod:`cowsim.clients.report`): the findings,
the plots chosen from the axes, the summary table and the failed runs.  The page loads
nothing from anywhere: CSS inline, plots as inline SVG.

Exit status: 0 written (a sweep with failed runs too: they are listed); 2 one line
naming DIR when it is missing, not a sweep's directory, has no tables yet, has no
completed run, or report.html cannot be written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cowsim.clients.report import write_report

EXIT_OK = 0

__all__ = ["add_command", "main"]


def add_command(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="render a sweep's directory as an HTML report",
        description="Write DIR/report.html from a sweep's tables (cowsim sweep --out DIR): "
                    "findings, plots chosen from the axes, the summary table, failed runs. "
                    "Self-contained: it loads nothing from the network.")
    report.add_argument("directory", metavar="DIR", type=Path, help="the sweep's directory")


def main(args: argparse.Namespace) -> int:
    outcome = write_report(args.directory)
    print(f"report: {outcome.path} ({outcome.plots} plots, {outcome.findings} findings)")
    return EXIT_OK
