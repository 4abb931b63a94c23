"""The ``workbench`` command: run notebooks into reports, list their parameters, install the kernel."""

from __future__ import annotations

import argparse
import sys

from papermill.exceptions import PapermillExecutionError

from workbench import runner

__all__ = ["main"]


def _parameters(pairs: list[list[str]] | None) -> dict:
    return {name: runner.parse_cli_value(value) for name, value in pairs or []}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="The MTL workbench's notebooks and reports.")
    commands = parser.add_subparsers(dest="command", required=True)
    parameter = dict(nargs=2, action="append", metavar=("NAME", "VALUE"), help="set a notebook parameter (repeatable)")

    run = commands.add_parser("run", help="execute one notebook into reports/NAME.ipynb and reports/NAME.html")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", **parameter)
    run.add_argument("-o", "--output-dir", default="reports")

    reports = commands.add_parser("reports", help="execute every notebook and write reports/index.html")
    reports.add_argument("-n", "--notebooks-dir", default="notebooks")
    reports.add_argument("-p", "--parameter", **parameter)
    reports.add_argument("-o", "--output-dir", default="reports")

    params = commands.add_parser("params", help="list a notebook's parameters and defaults")
    params.add_argument("notebook")

    commands.add_parser("kernel", help="install the 'workbench' Jupyter kernel for this Python if missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            report = runner.run_notebook(args.notebook, _parameters(args.parameter), args.output_dir)
            print(f"wrote {report.notebook} and {report.html}")
        elif args.command == "reports":
            reports = runner.run_all(args.notebooks_dir, args.output_dir, _parameters(args.parameter))
            print(f"wrote {len(reports)} reports and {args.output_dir}/index.html")
        elif args.command == "params":
            for parameter in runner.notebook_parameters(args.notebook).values():
                print(f"{parameter.name} = {parameter.default!r}  ({parameter.kind.__name__})")
        elif args.command == "kernel":
            print(f"kernel {runner.ensure_kernel()!r} is ready")
    except (ValueError, FileNotFoundError) as error:
        print(f"workbench: {error}", file=sys.stderr)
        return 2
    except PapermillExecutionError as error:
        print(f"workbench: a cell failed ({error.ename}: {error.evalue}); the previous report is untouched", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
