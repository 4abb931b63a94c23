"""The ``workbench`` command: run notebooks into reports, run sweeps, list parameters, install the kernel, merge model folders.

It exits with status 0 when everything ran, 1 when a notebook failed (a run, or a sweep's run), and
2 when it refused to start (an unknown parameter, a bad sweep or merge file, an output folder that is a file or exists for a merge,
a run of the same notebook into the same folder under way) or the system refused a file; a refusal
is one line on stderr, ``workbench: ...``, and is checked before anything is written.
"""

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
    output = dict(default="reports", help="the reports folder, where index.html lists every run (default: reports)")

    run = commands.add_parser(
        "run", help="execute one notebook: reports/NAME.html with its defaults, reports/runs/NAME/VALUES/ with other values",
    )
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", **parameter)
    run.add_argument("-o", "--output-dir", **output)

    reports = commands.add_parser("reports", help="execute every notebook with its defaults and write reports/index.html")
    reports.add_argument("-n", "--notebooks-dir", default="notebooks")
    reports.add_argument("-p", "--parameter", **parameter)
    reports.add_argument("-o", "--output-dir", **output)
    reports.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="notebooks run side by side, each kernel with its share of the cores (default: 1, one after another)")

    sweep = commands.add_parser("sweep", help="run every combination of a sweep file's parameters, each in a folder of its own")
    sweep.add_argument("sweep_file", metavar="SWEEP.yaml")
    sweep.add_argument("-o", "--output-dir", **output)
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster here)")
    where.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: one per core; 1: one run after another in this process)")

    params = commands.add_parser("params", help="list a notebook's parameters and defaults")
    params.add_argument("notebook")

    commands.add_parser("kernel", help="install the 'workbench' Jupyter kernel for this Python if missing")

    merge = commands.add_parser("merge", help="merge model folders as a mergekit-style YAML configuration says, into a new model folder")
    merge.add_argument("config", metavar="CONFIG.yaml")
    merge.add_argument("out_dir", metavar="OUT_DIR")
    merge.add_argument("--dry-run", action="store_true", help="print the plan (tensors, bytes read and written, peak memory) and read no weight")
    merge.add_argument("--max-shard-size", default="5GB", help="the largest shard written, as 5GB or 500MB (default: 5GB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            report = runner.run_report(args.notebook, _parameters(args.parameter), args.output_dir)
            print(f"wrote {report.notebook} and {report.html}")
        elif args.command == "reports":
            reports = runner.run_all(args.notebooks_dir, args.output_dir, _parameters(args.parameter), jobs=args.jobs)
            print(f"wrote {len(reports)} reports and {args.output_dir}/index.html")
        elif args.command == "sweep":
            summary = runner.run_sweep(args.sweep_file, args.output_dir, args.scheduler, args.workers)
            print(summary)
            print(f"index: {args.output_dir}/index.html")
            return 1 if summary.failed else 0
        elif args.command == "params":
            for parameter in runner.notebook_parameters(args.notebook).values():
                print(f"{parameter.name} = {parameter.default!r}  ({parameter.kind.__name__})")
        elif args.command == "merge":
            from workbench.merge.config import describe_dry_run, dry_run, parse_size, read_merge_config, run_merge_config

            plan, shard = read_merge_config(args.config), parse_size(args.max_shard_size)
            if args.dry_run:
                print(describe_dry_run(dry_run(plan)))
            else:
                print(f"wrote {run_merge_config(plan, args.out_dir, max_shard_bytes=shard)}")
        elif args.command == "kernel":
            print(f"kernel {runner.ensure_kernel()!r} is ready")
    except PapermillExecutionError as error:
        print(f"workbench: a cell failed ({error.ename}: {error.evalue}); the previous report is untouched", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # a refused value or folder; an OSError (a full disk, a permission) as a last resort
        print(f"workbench: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
