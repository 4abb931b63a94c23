"""Per-task Jacobian and Gramian of T losses over an encoder: the workbench's engine against peers.

Encoders: two MLPs (the size the notebooks probe and a wider one) and MiniLM (all-MiniLM-L6-v2 with
its top 2 blocks trainable, and with all parameters trainable) on 64 words of 8 tokens.
Peers, all measured in the same run on the same model and batch:
- ``naive``: one forward, then one ``torch.autograd.grad`` per task (``retain_graph``);
- ``torchjd.jac``: ``torchjd.autojac.jac`` on the stacked losses;
- ``torchjd.autogram`` (Gramian only, MLPs): torchjd's Gramian engine, which never forms the Jacobian.
Every timing includes the forward pass. The unit column ``steps`` divides each time by that of a
plain training step on the same model and batch (forward, backward of the summed losses, Adam step).
Memory is the peak of the bytes held by tensors allocated during the call (torch's profiler,
counted between operators), result included. The engine runs with ``strategy="auto"``: its warm-up
calls time each of its strategies and the row says which one it kept.

Run: ``make benchmark`` (or ``python benchmarks/bench_gradients.py [--quick] [--encoders small minilm-top2]``).
"""

from __future__ import annotations

import argparse
import json

import torch

from workbench import gradients
from workbench.gradients import model_task_jacobian
from workbench.models import mlp_encoder
from workbench.tasks import MultiTaskModel, regression_task
from workbench.studies import peak_memory_mib

from timing import median_seconds  # benchmarks/timing.py

# MLPs as (input features, hidden widths, batch): the size the notebooks probe, and a wider encoder;
# MiniLM as (trainable blocks, words, tokens per word)
ENCODERS = {
    "small": (16, (64, 64), 64),
    "wide": (64, (256, 256, 256), 256),
    "minilm-top2": (2, 64, 8),
    "minilm-all": (None, 64, 8),
}


def setup(encoder: str, n_tasks: int, seed: int = 0):
    """A fresh model with ``n_tasks`` regression heads, an input batch and targets (eval mode: no dropout)."""
    torch.manual_seed(seed)
    tasks = [regression_task(f"t{i}") for i in range(n_tasks)]
    if encoder.startswith("minilm"):
        from workbench.models import minilm_encoder

        trainable, words, tokens = ENCODERS[encoder]
        model = MultiTaskModel(minilm_encoder(trainable_layers=trainable), tasks, representation_dim=384)
        ids = torch.randint(1000, 30000, (words, tokens))
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] … [SEP]
        x, batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, words
    else:
        in_features, hidden, batch = ENCODERS[encoder]
        model = MultiTaskModel(mlp_encoder(in_features, hidden), tasks, representation_dim=hidden[-1])
        x = torch.randn(batch, in_features)
    targets = {t.name: torch.randn(batch) for t in tasks}
    return model.eval(), x, targets


def plain_step_factory(model):
    """One plain training step on the summed losses, the unit of the ``steps`` column."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-9)

    def plain_step(model, x, targets):
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(model.losses(x, targets).values())).sum().backward()
        optimizer.step()

    return plain_step


def engine_jacobian(model, x, targets):
    return model_task_jacobian(model, x, targets).matrix()


def engine_gramian(model, x, targets):
    return model_task_jacobian(model, x, targets).gramian()


def naive_jacobian(model, x, targets):
    losses = list(model.losses(x, targets).values())
    params = [p for _, p in model.shared_parameters()]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]) for loss in losses]
    return torch.stack(rows)


def naive_gramian(model, x, targets):
    j = naive_jacobian(model, x, targets)
    return j @ j.T


def torchjd_jacobian(model, x, targets):
    from torchjd.autojac import jac

    losses = torch.stack(list(model.losses(x, targets).values()))
    blocks = jac(losses, [p for _, p in model.shared_parameters()])
    return torch.cat([b.reshape(len(targets), -1) for b in blocks], dim=1)


def torchjd_gramian(model, x, targets):
    j = torchjd_jacobian(model, x, targets)
    return j @ j.T


def autogram_gramian_factory(model):
    from torchjd.autogram import Engine

    engine = Engine(model.encoder, batch_dim=None)

    def autogram_gramian(model, x, targets):
        losses = torch.stack(list(model.losses(x, targets).values()))
        return engine.compute_gramian(losses)

    return autogram_gramian


JACOBIAN = {"workbench": engine_jacobian, "naive": naive_jacobian, "torchjd.jac": torchjd_jacobian}
GRAMIAN = {"workbench": engine_gramian, "naive": naive_gramian, "torchjd.jac": torchjd_gramian, "torchjd.autogram": None}


def method(kind: str, name: str, model):
    if name == "plain step":
        return plain_step_factory(model)
    table = JACOBIAN if kind == "jacobian" else GRAMIAN
    return autogram_gramian_factory(model) if name == "torchjd.autogram" else table[name]


def methods(kind: str, encoder: str) -> list[str]:
    """The workbench, its peers for this encoder (autogram's module hooks are for the MLPs), and the unit."""
    names = list(JACOBIAN if kind == "jacobian" else GRAMIAN)
    if encoder.startswith("minilm"):
        names.remove("torchjd.autogram") if "torchjd.autogram" in names else None
    return names + ["plain step"]


def check_agreement(encoder: str, n_tasks: int) -> None:
    """Every method's Gramian against the naive Jacobian's Gramian accumulated in float64, to 1e-2 in Frobenius norm.

    (A float32 ``J @ J.T`` over MiniLM's 22 million parameters is itself off by up to 5e-3, measured at T = 8.)
    """
    model, x, targets = setup(encoder, n_tasks)
    jacobian = naive_jacobian(model, x, targets).double()
    reference = jacobian @ jacobian.T
    for name in methods("gramian", encoder)[:-1]:
        got = method("gramian", name, model)(model, x, targets).double()
        error = float(torch.linalg.norm(got - reference) / torch.linalg.norm(reference))
        if error > 1e-2:
            raise AssertionError(f"{name} disagrees with the naive Gramian: relative error {error:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, T = 2 and 8 only")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoders: {ENCODERS}")
    print("median of the runs, forward included; ratio = time / workbench time (> 1: the workbench is faster); steps = time / plain step\n")
    rows = []
    header = f"{'encoder':11} {'quantity':9} {'T':>3} {'method':17} {'ms':>9} {'ratio':>7} {'steps':>6} {'peak MiB':>9}  strategy"
    print(header)
    print("-" * len(header))
    for encoder in args.encoders:
        transformer = encoder.startswith("minilm")
        task_counts = (2, 8) if args.quick or transformer else (2, 8, 32)
        repeats = (3 if args.quick else 7) if transformer else (5 if args.quick else 30)
        for kind in ("jacobian", "gramian"):
            for n_tasks in task_counts:
                if kind == "gramian":
                    check_agreement(encoder, n_tasks)
                calls = {}
                for name in methods(kind, encoder):
                    model, x, targets = setup(encoder, n_tasks)  # a fresh model each: the autogram engine hooks its modules
                    calls[name] = (method(kind, name, model), (model, x, targets))
                timings = median_seconds(
                    {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in calls.items()}, repeats,
                    warmup={"workbench": gradients.LEARNING_CALLS},  # until the "auto" strategy has settled
                )
                engine_model, engine_x, engine_targets = calls["workbench"][1]
                strategy = model_task_jacobian(engine_model, engine_x, engine_targets).strategy
                memory = {name: peak_memory_mib(fn, *args) for name, (fn, args) in calls.items()}
                for name, seconds in timings.items():
                    ratio, steps = seconds / timings["workbench"], seconds / timings["plain step"]
                    chosen = strategy if name == "workbench" else ""
                    rows.append(dict(encoder=encoder, quantity=kind, tasks=n_tasks, method=name, ms=seconds * 1e3, ratio=ratio, steps=steps, peak_mib=memory[name], strategy=chosen))
                    print(f"{encoder:11} {kind:9} {n_tasks:>3} {name:17} {seconds * 1e3:9.2f} {ratio:7.2f} {steps:6.2f} {memory[name]:9.2f}  {chosen}", flush=True)
    with open("benchmarks/latest_gradients.json", "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
