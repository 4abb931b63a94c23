"""Published results on training methods, and whether they hold in a comparison run here.

The numbers are those the method papers report on NYUv2 with SegNet-MTAN (mean of 3 seeds; Δm%,
lower is better) and a third-party timing of one CelebA epoch relative to equal weighting; the
claims are the orderings those numbers state. :func:`check_claims` measures each claim on a
comparison from :func:`~workbench.studies.methods.compare_methods`, paired by seed, and says whether it
holds, clearly (the mean difference beyond two standard errors) or within the noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["PUBLISHED_DELTA_M", "PUBLISHED_COST", "CLAIMS", "check_claims", "claimed_methods", "paired_verdict"]

# NYUv2, SegNet-MTAN, Δm% (lower is better); "ew" is linear scalarisation with equal weights (LS).
PUBLISHED_DELTA_M = {"ew": 5.59, "mgda": 1.38, "pcgrad": 3.97, "cagrad": 0.20, "imtl_g": -0.76, "nash_mtl": -4.04, "famo": -4.10}
# The orderings tested: every method against equal weighting, and neighbours in the published ranking.
CLAIMS = [(m, "ew") for m in ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "famo")] + [("cagrad", "mgda"), ("imtl_g", "cagrad"), ("nash_mtl", "imtl_g")]
# Seconds per CelebA epoch relative to equal weighting.
PUBLISHED_COST = {"famo": 1.08, "cagrad": 4.47, "mgda": 5.58, "nash_mtl": 6.11, "pcgrad": 8.08}


def paired_verdict(differences: np.ndarray) -> str:
    """'holds' when the mean paired difference is negative; 'clearly' beyond two standard errors."""
    mean = differences.mean()
    if len(differences) < 2:
        return "holds (one seed)" if mean < 0 else "does not hold (one seed)"
    error = differences.std(ddof=1) / np.sqrt(len(differences))
    clear = abs(mean) > 2 * error
    if mean < 0:
        return "holds, clearly" if clear else "holds within the noise"
    return "reversed, clearly" if clear else "does not hold, within the noise"


def claimed_methods(methods: Sequence[str]) -> list[str]:
    """The methods of ``methods`` that the published Δm% claims name, in the order given."""
    return [m for m in methods if m in PUBLISHED_DELTA_M]


def check_claims(comparison: xr.Dataset, split: str = "test", unit: str = "ew"):
    """A table (pandas DataFrame) of the published claims that ``comparison`` can test.

    Each Δm% claim "A beats B" of :data:`CLAIMS` gets the measured mean Δm% of both, their
    mean paired difference over seeds and a verdict; each cost claim gets the published and the
    measured ratio of seconds per step to ``unit``. A final row gives the Spearman correlation of
    the published and measured Δm% over the methods both have.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    present = [m for m in PUBLISHED_DELTA_M if m in comparison.method.values]
    delta = comparison.delta_m.sel(split=split)
    rows = []
    for better, worse in CLAIMS:
        if better in present and worse in present:
            ours, theirs = delta.sel({"method": better}), delta.sel({"method": worse})
            differences = (ours - theirs).values
            rows.append({
                "claim": f"{better} beats {worse} (published Δm% {PUBLISHED_DELTA_M[better]:+.2f} vs {PUBLISHED_DELTA_M[worse]:+.2f})",
                "measured": f"{float(ours.mean()):+.2f} vs {float(theirs.mean()):+.2f}",
                "mean difference": float(differences.mean()),
                "verdict": paired_verdict(differences),
            })
    seconds = comparison.seconds_per_step.mean("seed")
    if unit in comparison.method.values:
        for method, ratio in PUBLISHED_COST.items():
            if method in comparison.method.values:
                measured = float(seconds.sel({"method": method}) / seconds.sel({"method": unit}))
                rows.append({"claim": f"{method} costs {ratio:.2f}× {unit} per step", "measured": f"{measured:.2f}×", "mean difference": measured - ratio, "verdict": "same order" if 0.5 < measured / ratio < 2 else "differs"})
    if len(present) >= 3:
        rho = spearmanr([PUBLISHED_DELTA_M[m] for m in present], delta.sel({"method": present}).mean("seed").values).statistic
        rows.append({"claim": f"the published ordering of {', '.join(present)}", "measured": f"Spearman ρ = {rho:+.2f}", "mean difference": np.nan, "verdict": "agrees" if rho > 0.5 else "does not agree"})
    return pd.DataFrame(rows, columns=["claim", "measured", "mean difference", "verdict"]).set_index("claim")
