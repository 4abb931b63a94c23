"""The same experiment on several shapes of the same data: do the verdicts change when every task sees its own data?

A study run on the shared form of a dataset (every task labelled on every sample) and on another of
its shapes (:data:`~workbench.studies.problems.DATA_SHAPES`: one dataset per task, missing labels)
gives one result per shape; these functions set them side by side and say, in one line, whether the
verdict stays: the order of the methods by Δm%, each published claim's verdict, and which affinity
probe predicts the measured transfer best.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from workbench.studies.claims import check_claims
from workbench.studies.grouping import GroupingStudy

__all__ = ["methods_across_shapes", "claims_across_shapes", "probes_across_shapes"]


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def methods_across_shapes(comparisons: Mapping[str, xr.Dataset], split: str = "test"):
    """``(table, verdict)``: each method's mean Δm% and rank (1: best) in each shape's comparison, over the methods
    all compared; the verdict names the best method of each shape and the rank correlation of the first
    shape's Δm% with each other's."""
    import pandas as pd

    shapes = list(comparisons)
    methods = [m for m in comparisons[shapes[0]].method.values if all(m in c.method.values for c in comparisons.values())]
    table = pd.DataFrame({shape: comparisons[shape].delta_m.sel({"split": split, "method": methods}).mean("seed").to_pandas() for shape in shapes})
    ranks = table.rank().astype(int).add_suffix(" rank")
    best = {shape: table[shape].idxmin() for shape in shapes}
    agreement = [f"ρ({shapes[0]}, {shape}) = {_spearman(table[shapes[0]], table[shape]):+.2f}" for shape in shapes[1:]]
    same = len(set(best.values())) == 1
    verdict = (
        f"best Δm% {'the same' if same else 'differs'}: " + ", ".join(f"{shape} {method}" for shape, method in best.items())
        + (f"; order of the {len(methods)} methods: " + ", ".join(agreement) if agreement else "")
    )
    return pd.concat([table.add_suffix(" Δm%"), ranks], axis=1), verdict


def claims_across_shapes(comparisons: Mapping[str, xr.Dataset], split: str = "test"):
    """The published claims' verdicts (:func:`~workbench.studies.claims.check_claims`) in each shape, side by side,
    with a column saying whether they agree."""
    import pandas as pd

    verdicts = pd.DataFrame({shape: check_claims(comparison, split).verdict for shape, comparison in comparisons.items()})
    verdicts["same verdict"] = verdicts.nunique(axis=1) == 1
    return verdicts


def probes_across_shapes(studies: Mapping[str, GroupingStudy], statistic: str = "spearman"):
    """``(table, verdict)``: each affinity probe's mean ``statistic`` with the measured gain (its report card) in each
    shape's study, with the seed-to-seed ceiling of the measurement; the verdict names the best probe of each shape."""
    import pandas as pd

    column = f"{statistic} (mean)"
    table = pd.DataFrame({shape: study.report_table()[column] for shape, study in studies.items()})
    probes = [name for name in table.index if not np.isnan(table.loc[name]).all()]
    best = {shape: table.loc[[p for p in probes if p in studies[shape].affinities], shape].idxmax() for shape in table.columns}
    same = len(set(best.values())) == 1
    verdict = f"best predictor of the measured transfer {'the same' if same else 'differs'}: " + ", ".join(
        f"{shape} {probe} ({table.loc[probe, shape]:+.2f})" for shape, probe in best.items()
    )
    return table, verdict
