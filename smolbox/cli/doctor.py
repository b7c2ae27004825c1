"""`smolbox doctor`: show whether this host can run machines, and how to fix it.

Thin by design: the checks live in :mod:`smolbox.host.doctor`; this module only
renders the report (rich table or JSON on stdout) and, when the engine cannot
run, raises the report's HostError-family error *after* printing, so main.py
renders it as a diagnostic and exits non-zero.
"""

from __future__ import annotations

import typer
from rich.text import Text

from smolbox.cli import render
from smolbox.cli.app import OPTIONS, app
from smolbox.host.doctor import DoctorReport, run_doctor

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _print_table(report: DoctorReport) -> None:
    from rich.table import Table

    table = Table(title="smolbox doctor", title_justify="left", header_style="bold")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        table.add_row(check.name, Text(check.status, style=_STYLE[check.status]),
                      check.detail, check.fix)
    render.stdout.print(table)
    verdict = Text()
    if report.ok:
        verdict.append("ready", style="bold green")
        verdict.append(f": machines run with {report.accelerator}"
                       + ("" if report.kvm_usable else " (software emulation)"))
    else:
        verdict.append("not ready", style="bold red")
        verdict.append(": fix the failed checks above")
    render.stdout.print(verdict)


@app.command()
def doctor(
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check QEMU, KVM, disk space and the tools smolbox needs on this host."""
    if json_output:
        OPTIONS.json = True  # main.py then renders a failure as JSON too
    report = run_doctor()
    if OPTIONS.json:
        render.print_json(report.to_dict())
    else:
        _print_table(report)
    error = report.error()
    if error is not None:
        raise error
