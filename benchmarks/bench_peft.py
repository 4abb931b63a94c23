"""Milliseconds per training step and peak memory of every registered parameter-efficient scheme against ``peft``'s
LoRA on the same MiniLM and batch.

Model: all-MiniLM-L6-v2 (eager attention, the pooler removed) with its top block adapted, three regression
tasks with linear heads on the mean-pooled tokens; batch: 64 words of 8 tokens, every sample labelled for every
task. The peer is ``peft.get_peft_model`` with ``peft``'s default LoRA (r = 8, α = 8, query and value) on the top
block, under the same heads; the workbench's ``lora`` has the same options by default. Everything runs in eval mode
(no dropout) with the full forward (no cached frozen blocks, which the peer cannot use). A step is the training loop's ``sum`` step
(``summed_step``: forward, the summed loss's backward, the model's auxiliary losses', Adam's step over the trainable
parameters); every task labels every word, so Align-LoRA's alignment term is zero and its step a shared LoRA's. Calls take turns in every round (median of
the rounds). Ratio = time / ``peft``'s LoRA (< 1: faster). Peak MiB: the most bytes held by tensors allocated
during one step (torch's profiler).

Run: ``python benchmarks/bench_peft.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from workbench.models import SCHEMES, Backbone, TransformerEncoder, make_scheme, minilm_encoder, minilm_path
from workbench.tasks import MultiTaskModel, regression_task
from workbench.studies import peak_memory_mib

from timing import median_seconds, plain_step  # benchmarks/timing.py

WORDS, TOKENS, TASKS = 64, 8, 3


def _peft_lora(tasks) -> MultiTaskModel:
    import peft
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, attn_implementation="eager")
    transformer.pooler = None
    config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], layers_to_transform=[transformer.config.num_hidden_layers - 1])
    return MultiTaskModel(TransformerEncoder(peft.get_peft_model(transformer, config)), tasks, representation_dim=384)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 31
    tasks = [regression_task(f"t{i}") for i in range(TASKS)]
    backbone = Backbone("MiniLM", lambda: minilm_encoder(trainable_layers=1), (384,), layers="tensor")
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (WORDS, TOKENS))
    ids[:, 0], ids[:, -1] = 101, 102
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    targets = {t.name: torch.randn(WORDS) for t in tasks}
    models = {"peft lora": _peft_lora(tasks).eval()}
    for name in SCHEMES:
        torch.manual_seed(0)
        models[name] = make_scheme(name, tasks, backbone).eval()
    steps = {name: plain_step(model, x, targets) for name, model in models.items()}
    seconds = median_seconds(steps, rounds)
    rows = []
    print(f"{'scheme':14s} {'ms/step':>8s} {'vs peft':>8s} {'trainable':>10s} {'peak MiB':>9s}")
    for name, model in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        peak = peak_memory_mib(steps[name])
        ratio = seconds[name] / seconds["peft lora"]
        rows.append({"scheme": name, "ms": 1000 * seconds[name], "ratio_to_peft_lora": ratio, "trainable": trainable, "peak_mib": peak})
        print(f"{name:14s} {1000 * seconds[name]:8.2f} {ratio:8.2f} {trainable:10d} {peak:9.1f}")
    Path(__file__).with_name("latest_peft.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
