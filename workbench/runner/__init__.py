"""Execute the parameterised notebooks with papermill, export offline HTML reports, run sweeps, list every run.

One module per job:

- ``parameters``: a notebook's ``parameters`` cell, and values checked against it;
- ``record``: what a run leaves in its folder (report, results, log, records of the last complete
  run and of the current attempt) and its identity;
- ``staging``: a run's files written apart and published whole, and the lock that allows one run of
  a notebook into a folder at a time;
- ``execute``: one papermill run into a folder;
- ``export``: executed notebook to self-contained HTML;
- ``reports``: where ``workbench run`` / ``workbench reports`` put a notebook's report;
- ``index``: the reports site, ``index.html``, listing every recorded run;
- ``sweepfile``: a sweep file read and checked into runs; ``sweep``: running them (Dask or one by one);
- ``combine``: a sweep's results as one Dataset (``workbench.load_sweep``).
"""

from workbench.runner.combine import load_sweep
from workbench.runner.execute import KERNEL_NAME, Report, ensure_kernel, run_notebook
from workbench.runner.export import export_html
from workbench.runner.index import write_index
from workbench.runner.parameters import Parameter, check_parameters, notebook_parameters, parse_cli_value
from workbench.runner.record import RunRecord, read_record
from workbench.runner.reports import report_folder, run_all, run_report
from workbench.runner.staging import RunInProgress
from workbench.runner.sweep import SweepSummary, run_sweep
from workbench.runner.sweepfile import Sweep, read_sweep

__all__ = [
    "KERNEL_NAME",
    "Parameter",
    "Report",
    "RunInProgress",
    "RunRecord",
    "Sweep",
    "SweepSummary",
    "check_parameters",
    "ensure_kernel",
    "export_html",
    "load_sweep",
    "notebook_parameters",
    "parse_cli_value",
    "read_record",
    "read_sweep",
    "report_folder",
    "run_all",
    "run_notebook",
    "run_report",
    "run_sweep",
    "write_index",
]
