"""Align-LoRA against the official repository's definition: the divergence is the mean of the two KLs between
diagonal Gaussians fitted per position, the alignment term reads the LoRA down-projections' outputs of each
task's samples, it vanishes where every task is labelled on every sample (Align-LoRA then trains as the shared
LoRA), and its LoRA moves to ``peft`` as any shared LoRA does."""

import itertools

import numpy as np
import pytest
import torch

from tests.test_peft_laws import BACKBONES, TASKS, batch, perturbed
from workbench.models import make_scheme
from workbench.models.peft.align_lora import symmetric_gaussian_kl
from workbench.tasks import MultiTaskData, TaskInputs
from workbench.train import train


def one_dimensional_kl(mean_p, var_p, mean_q, var_q):
    return 0.5 * (np.log(var_q / var_p) + var_p / var_q + (mean_q - mean_p) ** 2 / var_q - 1)


def test_the_divergence_is_the_mean_of_both_kls_of_the_gaussians_fitted_per_position_summed_over_ranks():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(20, 3, 2, generator=g, dtype=torch.float64), 2 + 3 * torch.randn(15, 5, 2, generator=g, dtype=torch.float64)
    expected = 0.0
    for position in range(3):  # the first min(3, 5) positions
        for rank in range(2):
            a, b = p[:, position, rank].numpy(), q[:, position, rank].numpy()
            moments_a, moments_b = (a.mean(), a.var(ddof=1) + 1e-8), (b.mean(), b.var(ddof=1) + 1e-8)
            expected += (one_dimensional_kl(*moments_a, *moments_b) + one_dimensional_kl(*moments_b, *moments_a)) / 2
    np.testing.assert_allclose(symmetric_gaussian_kl(p, q).item(), expected / 3, rtol=1e-10)
    assert symmetric_gaussian_kl(p, p).item() == pytest.approx(0.0, abs=1e-12)
    vectors = torch.randn(10, 4, generator=g)
    torch.testing.assert_close(symmetric_gaussian_kl(vectors, vectors + 1), symmetric_gaussian_kl(vectors.unsqueeze(1), vectors.unsqueeze(1) + 1))


def build(backbone: str, **options):
    torch.manual_seed(0)
    return make_scheme("align_lora", TASKS, BACKBONES[backbone], rank=2, **options)


@pytest.mark.parametrize("backbone", ["MLP", "BERT"])
def test_the_alignment_term_reads_the_lora_down_projections_of_each_tasks_samples(backbone):
    model = perturbed(build(backbone, align_weight=0.5))
    x, targets = batch(backbone, n=12)
    rows = {"a": torch.arange(0, 6), "b": torch.arange(4, 12), "c": torch.tensor([0, 3, 5, 7, 9])}
    routed = TaskInputs((x,), {task: (0, index) for task, index in rows.items()})
    recorded = {}
    handles = [module.register_forward_hook(lambda m, args, out, name=name: recorded.__setitem__(name, out))
               for name, module in model.named_modules() if name.endswith("lora_A.default")]
    with torch.no_grad():
        model.encoder.base(x)
    for handle in handles:
        handle.remove()
    assert recorded
    expected = np.mean([np.mean([symmetric_gaussian_kl(features[rows[a]], features[rows[b]]).item() for a, b in itertools.combinations("abc", 2)])
                        for features in recorded.values()])
    got = model.encoder.auxiliary_loss(routed, {t: targets[t][rows[t]] for t in rows})
    np.testing.assert_allclose(got.item(), 0.5 * expected, rtol=1e-5)
    only_a = {"a": targets["a"][rows["a"]]}
    assert model.encoder.auxiliary_loss(routed, only_a) is None, "one task has nothing to align with"
    assert build(backbone, align_weight=0.0).encoder.auxiliary_loss(routed, targets) is None


def test_where_every_task_is_labelled_on_every_sample_align_lora_trains_as_the_shared_lora():
    x, targets = batch("MLP", n=32)
    data = MultiTaskData(x, targets, TASKS)
    histories = {}
    for scheme in ("lora", "align_lora"):
        torch.manual_seed(0)
        model = make_scheme(scheme, TASKS, BACKBONES["MLP"], rank=2)
        histories[scheme] = train(model, data, 5, method="ew", batch_size=16, progress=False).history.train_loss.values
    np.testing.assert_array_equal(histories["lora"], histories["align_lora"])
    missing = data.without_labels(0.5, seed=1)
    torch.manual_seed(0)
    aligned = train(make_scheme("align_lora", TASKS, BACKBONES["MLP"], rank=2), missing, 5, method="ew", batch_size=16, progress=False)
    torch.manual_seed(0)
    plain = train(make_scheme("lora", TASKS, BACKBONES["MLP"], rank=2), missing, 5, method="ew", batch_size=16, progress=False)
    assert not np.array_equal(aligned.history.train_loss.values[1:], plain.history.train_loss.values[1:]), "the tasks' samples differ: the term acts"


def test_its_lora_is_a_peft_lora_and_bad_weights_are_refused(tmp_path):
    from workbench.models.peft.peft_format import load_lora, save_lora

    model = perturbed(build("BERT"))
    save_lora(model, tmp_path / "aligned")
    torch.manual_seed(0)
    plain = load_lora(make_scheme("lora", TASKS, BACKBONES["BERT"], rank=2), tmp_path / "aligned")
    x, _ = batch("BERT")
    model.eval(), plain.eval()
    torch.testing.assert_close(plain.represent(x), model.represent(x), rtol=0, atol=1e-6)
    for weight in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match="align_lora: align_weight must be a non-negative number"):
            build("MLP", align_weight=weight)
