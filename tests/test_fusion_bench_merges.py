"""MagMax, TSV-M, Iso-C, Iso-CTS and EMR against FusionBench 0.2.33's implementations on the same task vectors, their
definitions' edge cases, and MetaGPT's coefficients (no public implementation to run) against its definition."""

import contextlib
import io

import pytest
import torch

from tests.test_merge import assert_close, registered

SHAPES = {"attention.weight": (24, 20), "output.weight": (12, 30), "output.bias": (24,), "conv.weight": (2, 3, 4)}


def models(n_tasks=3, seed=0, scale=0.5, dtype=torch.float32):
    """A base state dict (with an integer buffer) and ``n_tasks`` fine-tuned ones whose matrices are large enough for
    Iso-CTS's subspaces (20 directions, 3 of them tasks' own for three tasks)."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()} | {"position_ids": torch.arange(5)}
    tasks = {f"t{i}": {k: v + scale * torch.randn(v.shape, generator=g, dtype=dtype) if v.is_floating_point() else v.clone() for k, v in base.items()}
             for i in range(n_tasks)}
    return base, tasks


def task_vectors(base, tasks):
    return [{k: sd[k] - base[k] for k in base if base[k].is_floating_point()} for sd in tasks.values()]


def applied(base, vector, lam):
    return {k: base[k] + lam * vector[k] if k in vector else base[k] for k in base}


def quietly(function, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # FusionBench prints a line per tensor
        return function(*args, **kwargs)


def fusion_bench_magmax(base, tasks, lam):
    from fusion_bench.method.magmax.magmax import _magmax_select

    return applied(base, _magmax_select(task_vectors(base, tasks)), lam)


def fusion_bench_tsv(base, tasks, lam):
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction

    return applied(base, quietly(compute_and_sum_svd_mem_reduction, task_vectors(base, tasks), accelerator="cpu"), lam)


def fusion_bench_iso_c(base, tasks, lam):
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c

    return applied(base, quietly(iso_c, task_vectors(base, tasks), accelerator="cpu"), lam)


def fusion_bench_iso_cts(base, tasks, lam, fraction=0.8):
    from fusion_bench.method.isotropic_merging.iso_utils import iso_cts

    return applied(base, quietly(iso_cts, task_vectors(base, tasks), common_space_fraction=fraction, accelerator="cpu"), lam)


CASES = {
    # case: (registered merge, its options, FusionBench's merge of the same models, task models)
    "magmax": ("magmax", {}, lambda b, t: fusion_bench_magmax(b, t, 0.5), 3),
    "magmax_one": ("magmax", {"lam": 1.0}, lambda b, t: fusion_bench_magmax(b, t, 1.0), 4),
    "tsv_merge": ("tsv_merge", {}, lambda b, t: fusion_bench_tsv(b, t, 1.0), 3),
    "tsv_merge_eight": ("tsv_merge", {"lam": 0.7}, lambda b, t: fusion_bench_tsv(b, t, 0.7), 8),
    "iso_c": ("iso_c", {}, lambda b, t: fusion_bench_iso_c(b, t, 1.0), 3),
    "iso_c_scaled": ("iso_c", {"lam": 1.5}, lambda b, t: fusion_bench_iso_c(b, t, 1.5), 5),
    "iso_cts": ("iso_cts", {}, lambda b, t: fusion_bench_iso_cts(b, t, 1.0), 3),
    "iso_cts_half": ("iso_cts", {"common_space_fraction": 0.5, "lam": 1.2}, lambda b, t: fusion_bench_iso_cts(b, t, 1.2, 0.5), 4),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_fusion_bench_methods_equal_fusion_bench(case, seed):
    """In float64, where the chains of SVDs agree to 1e-9 (in float32 they differ by up to 2e-5 on entries of about 1)."""
    name, options, theirs, n_tasks = CASES[case]
    base, tasks = models(n_tasks=n_tasks, seed=seed, dtype=torch.float64)
    ours = registered(name, base, tasks, **options)
    assert_close(ours, theirs(base, tasks), atol=1e-9)


def test_magmax_takes_the_largest_magnitude_and_a_later_task_wins_a_tie():
    base = {"w": torch.zeros(3)}
    tasks = {"a": {"w": torch.tensor([1.0, -3.0, 2.0])}, "b": {"w": torch.tensor([-2.0, 1.0, -2.0])}}
    torch.testing.assert_close(registered("magmax", base, tasks, lam=1.0)["w"], torch.tensor([-2.0, -3.0, -2.0]))


def test_tsv_merge_of_orthogonal_low_rank_task_matrices_is_their_sum():
    """Task matrices of rank ⌊r/T⌋ in mutually orthogonal subspaces are kept whole and already decorrelated."""
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))
    p, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1)))
    tau = [(q[:, 4 * m:4 * m + 4] * torch.tensor([3.0, 2.0, 1.5, 1.0])) @ p[:, 4 * m:4 * m + 4].T for m in range(3)]
    base = {"w": torch.zeros(12, 12)}
    merged = registered("tsv_merge", base, {f"t{m}": {"w": t} for m, t in enumerate(tau)})["w"]
    torch.testing.assert_close(merged, sum(tau), atol=1e-5, rtol=0)


def test_iso_cts_keeps_at_most_the_matrixs_directions_where_rounding_would_ask_for_more():
    base, tasks = models(n_tasks=3)
    merged = registered("iso_cts", base, tasks, common_space_fraction=0.0)  # q = round(20 / 3) = 7 > ⌊20 / 3⌋ = 6
    tau = merged["attention.weight"] - base["attention.weight"]
    singular = torch.linalg.svdvals(tau)
    torch.testing.assert_close(singular, singular.mean().expand_as(singular), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="common_space_fraction must be in"):
        registered("iso_cts", base, tasks, common_space_fraction=1.5)


@pytest.mark.parametrize("n_tasks", [2, 4])
def test_emr_equals_fusion_bench_unified_vector_masks_and_rescalers(n_tasks):
    from fusion_bench.method.emr_merging.utils import emr_merge

    from workbench.merge import make_merge

    base, tasks = models(n_tasks=n_tasks, seed=n_tasks, dtype=torch.float64)
    merged = make_merge("emr")(base, tasks)
    vector, masks, rescalers = emr_merge(task_vectors(base, tasks))
    torch.testing.assert_close(torch.as_tensor(merged.details["rescaler"].values), rescalers.double(), rtol=1e-6, atol=0)
    for m, task in enumerate(tasks):
        expected = {k: base[k] + vector[k] * masks[k][m] * rescalers[m].double() if k in vector else base[k] for k in base}
        assert_close(merged.for_task(task), expected, atol=1e-6)  # FusionBench sums the rescalers' means in float32
    assert all(torch.equal(merged.masks[k], torch.stack(masks[k])) for k in vector)


def test_emr_elects_the_sign_of_the_sum_and_the_largest_agreeing_magnitude():
    from workbench.merge.emr import elect_mask

    tau = torch.tensor([[2.0, -1.0, 0.0], [-1.0, -3.0, 0.0], [0.5, 1.0, 0.0]])
    unified, masks = elect_mask(tau)
    torch.testing.assert_close(unified, torch.tensor([2.0, -3.0, 0.0]))  # a sum of 0 elects −, and no entry agrees there
    assert masks.tolist() == [[True, True, False], [False, True, False], [True, False, False]]


def test_metagpt_weights_each_task_by_its_squared_norm_and_the_weights_sum_to_one():
    from workbench.merge import make_merge

    base = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    tasks = {"a": {"w": torch.ones(2, 2), "b": torch.zeros(2)}, "b": {"w": torch.zeros(2, 2), "b": torch.tensor([2.0, 0.0])}}
    merged = make_merge("metagpt")(base, tasks)  # ‖τ_a‖² = 4, ‖τ_b‖² = 4: λ = 1/2 each
    torch.testing.assert_close(torch.as_tensor(merged.details["lambda"].values), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(merged.weights["w"], torch.full((2, 2), 0.5))
    tasks["b"]["b"] = torch.tensor([4.0, 0.0])  # ‖τ_b‖² = 16: λ = 0.2, 0.8
    merged = make_merge("metagpt")(base, tasks)
    torch.testing.assert_close(merged.weights["b"], torch.tensor([3.2, 0.0]))
    assert float(merged.details["lambda"].sum()) == pytest.approx(1.0)


def official_pcb(flat, ratio):
    """PCB merging as the official ``pcb-merging.py`` writes it (sorted rows, minmax ``normalize``, ``clamp``)."""

    def normalize(x):
        low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        return (x - low) / (high - low)

    def clamp(x, min_ratio=0.0, max_ratio=0.0):
        d = x.size(1)
        ordered = torch.sort(x, dim=1).values
        return torch.clamp(x, ordered[:, int(d * min_ratio)].unsqueeze(1), ordered[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1))

    n = flat.shape[0]
    magnitude = clamp(flat.abs(), 0.0001, 0.0001)
    clipped = torch.sign(flat) * magnitude
    task = torch.exp(n * normalize(magnitude) ** 2) * torch.tanh(flat * flat.sum(0))
    scale = normalize(clamp(task, 1 - ratio, 0))
    return (clipped * scale).sum(0) / torch.clamp(scale.sum(0), min=1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_pcb_equals_the_official_code_written_out_on_the_whole_models_task_vectors(ratio):
    from workbench.merge import make_merge
    from workbench.merge.pcb import pcb_merged_vector

    base, tasks = models(n_tasks=3, seed=2, dtype=torch.float64)
    flat = torch.stack([torch.cat([(sd[k] - base[k]).reshape(-1) for k in SHAPES]) for sd in tasks.values()])
    expected = official_pcb(flat, ratio)
    torch.testing.assert_close(pcb_merged_vector(flat, ratio), expected, atol=1e-12, rtol=0)
    merged = make_merge("pcb", ratio=ratio, lam=0.8)(base, tasks).weights
    ours = torch.cat([(merged[k] - base[k]).reshape(-1) for k in SHAPES])
    torch.testing.assert_close(ours, 0.8 * expected, atol=1e-12, rtol=0)
    assert torch.equal(merged["position_ids"], base["position_ids"])
    kept = float((expected != 0).double().mean())
    assert ratio - 0.02 < kept < 3 * ratio + 0.02  # each of the 3 tasks keeps its top r: their union holds r to 3r
