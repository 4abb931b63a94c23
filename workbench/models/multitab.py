"""MultiTab-Net (Sinodinos, Wei & Armanfard, AAAI 2026; the official Armanfard-Lab/MultiTab ``MTT``), under the model contract.

A transformer over one sample's tokens: ``T`` task tokens, then one token per input feature,

    h⁰ = [e_1; …; e_T; x_1 w_1 + b_1; …; x_F w_F + b_F]          (B, T + F, C)

where task token ``t`` is the embedding ``e_t`` of a constant 1 (the official code embeds the constant with a
``Linear(1, C)`` per token; here its weight and bias are folded into one vector) and feature ``f``'s token a
linear embedding of its scalar ``x_f``. Each of ``layers`` pre-LN blocks is

    h ← h + Attn(LN(h), mask),   h ← h + MLP(LN(h)),   MLP = Linear(C, ff) · GELU · Linear(ff, C)

with ``heads`` attention heads (``nn.MultiheadAttention``) and no final norm, as the official code. Head ``t``
reads task token ``t``'s last state: ``Z = h[:, :T]``, ``(B, T, C)`` (slot heads, linear; the paper's towers are
MLPs of ``[64]``). The boolean attention mask (True = blocked, rows the queries) is

- ``"TxT"`` (the default, and the Higgs configuration's): a task token attends no other task token (itself kept);
- ``"FxT"``: a feature token attends no task token;
- ``"FxT_TxT"``: both; ``"none"``: no mask.

Init as the official code: every linear layer and embedding ``N(0, 0.01)`` with zero biases (the attention's
input projection keeps PyTorch's Xavier init, as it is no ``nn.Linear`` there); the heads too. The Higgs
configuration is 1 block, 4 heads, ``C = 16``, ``ff = 256``, the defaults here. Not implemented: the
``"row_col"`` blocks (an inter-sample attention across the batch after each inter-feature layer, with optional
RoPE), which make a sample's output depend on the other samples of its batch; dropout (0 in that configuration).

It reads the raw input, not the backbone's encoder: the backbone says only the input's shape. An input of one
sample ``(F,)`` gives ``F`` feature tokens; a larger one (an image ``(1, H, W)``) is flattened, one token per
value, in ``flatten`` order. Attention costs ``O((T + F)²)`` per sample and layer, so the tokens are capped at
``max_tokens`` (:data:`MAX_TOKENS` by default, room for a wide table's features; MultiDigits' 192 pixels are
refused, so studies leave it out there); named inputs (token ids) are refused.

Shared and task-owned: the feature embeddings and the blocks serve every task. Task token ``t``'s embedding is
task ``t``'s own where it reaches ``Z[:, t]`` alone: under ``"FxT_TxT"``, where no other token reads it, and under
``"TxT"`` with one block, where the feature tokens read it but their outputs are no part of ``Z``; otherwise (a
feature token reads it and passes it on to a later block, or another task token reads it) it is shared. What the
probes then measure: the per-task gradients over the embeddings and blocks (and the task tokens where they are
shared), and ``∂L_t/∂Z``, non-zero only in slot ``t``: the saliency of task ``t``'s token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from workbench.models.backbone import Backbone
from workbench.models.mmoe import slot_heads
from workbench.tasks import MultiTaskModel, Task

__all__ = ["MASKS", "MAX_TOKENS", "MultiTabEncoder", "attention_mask", "multitab_net"]

MASKS = ("TxT", "FxT", "FxT_TxT", "none")
"""The attention masks: which task tokens a task token (TxT) or a feature token (FxT) may not attend."""

MAX_TOKENS = 128
"""The most tokens (task tokens and features) a sample may have by default."""

_INIT_STD = 0.01


def attention_mask(tasks: int, features: int, mask: str) -> Tensor | None:
    """The ``(T + F, T + F)`` boolean mask (True = blocked; row: the query, column: the key) of ``mask``, ``None`` for ``"none"``."""
    if mask == "none":
        return None
    blocked = torch.zeros(tasks + features, tasks + features, dtype=torch.bool)
    if mask in ("FxT", "FxT_TxT"):
        blocked[tasks:, :tasks] = True
    if mask in ("TxT", "FxT_TxT"):
        blocked[:tasks, :tasks] = ~torch.eye(tasks, dtype=torch.bool)
    return blocked


class _Block(nn.Module):
    """A pre-LN transformer block ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, heads: int, ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))

    def forward(self, h: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """The block's output and, with ``need_weights``, its attention weights ``(B, heads, N, N)``."""
        u = self.norm1(h)
        attended, weights = self.attention(u, u, u, attn_mask=mask, need_weights=need_weights, average_attn_weights=False)
        h = h + attended
        return h + self.mlp(self.norm2(h)), weights


class MultiTabEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: task ``t``'s token after the blocks (see the module docstring).

    ``x`` is ``(B, F)`` or any ``(B, ...)`` of ``F`` values a sample, flattened."""

    def __init__(self, tasks: Sequence[str], features: int, dim: int, heads: int, layers: int, ff: int, mask: str) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.mask_mode = mask
        self.task_tokens = nn.ParameterDict({task: nn.Parameter(torch.randn(dim) * _INIT_STD) for task in tasks})
        self.feature_weight = nn.Parameter(torch.randn(features, dim) * _INIT_STD)
        self.feature_bias = nn.Parameter(torch.zeros(features, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, ff) for _ in range(layers))
        self.register_buffer("mask", attention_mask(len(self.task_order), features, mask), persistent=False)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module)

    def embed(self, x: Tensor) -> Tensor:
        """The tokens ``h⁰`` ``(B, T + F, C)``: the task tokens, then the features' embeddings."""
        values = x.flatten(1)
        tasks = torch.stack([self.task_tokens[task] for task in self.task_order]).expand(values.shape[0], -1, -1)
        return torch.cat([tasks, values[:, :, None] * self.feature_weight + self.feature_bias], dim=1)

    def tokens(self, x: Tensor) -> Tensor:
        """Every token's state after the last block, ``(B, T + F, C)``."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, self.mask)[0]
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens(x)[:, : len(self.task_order)]

    def attention_weights(self, x: Tensor) -> list[Tensor]:
        """Each block's attention weights on ``x``, ``(B, heads, T + F, T + F)`` (row: the query, column: the key)."""
        h, weights = self.embed(x), []
        for block in self.blocks:
            h, w = block(h, self.mask, need_weights=True)
            weights.append(w)
        return weights

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Task ``t``'s token embedding where it reaches ``Z[:, t]`` alone: under ``"FxT_TxT"``, and under ``"TxT"`` with
        one block (the feature tokens read it there, but their outputs are no part of ``Z``); nothing otherwise."""
        if not (self.mask_mode == "FxT_TxT" or (self.mask_mode == "TxT" and len(self.blocks) == 1)):
            return {}
        return {task: [(f"task_tokens.{task}", self.task_tokens[task])] for task in self.task_order}


def _init_linear(module: nn.Linear) -> None:
    """The official init: weight ``N(0, 0.01)``, bias 0."""
    nn.init.normal_(module.weight, 0.0, _INIT_STD)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def multitab_net(
    tasks: Sequence[Task], backbone: Backbone, dim: int = 16, heads: int = 4, layers: int = 1, ff: int = 256, mask: str = "TxT",
    max_tokens: int = MAX_TOKENS,
) -> MultiTaskModel:
    """MultiTab-Net on the raw input of ``backbone``'s shape (see the module docstring): ``layers`` blocks of width
    ``dim`` with ``heads`` heads and feed-forward width ``ff``, attention ``mask`` (one of :data:`MASKS`), at most
    ``max_tokens`` tokens per sample."""
    for name, value in (("dim", dim), ("heads", heads), ("layers", layers), ("ff", ff), ("max_tokens", max_tokens)):
        if value < 1:
            raise ValueError(f"multitab_net: {name} must be at least 1, got {value}")
    if dim % heads:
        raise ValueError(f"multitab_net: dim ({dim}) must be divisible by heads ({heads})")
    if mask not in MASKS:
        raise ValueError(f"multitab_net: mask must be one of {list(MASKS)}, not {mask!r}")
    if backbone.inputs is None:
        raise ValueError(f"multitab_net reads the raw input, one token per feature; the {backbone.name} backbone's inputs are named "
                         "tensors (token ids), not a tensor of features")
    features = math.prod(backbone.inputs)
    if len(tasks) + features > max_tokens:
        raise ValueError(f"multitab_net: {len(tasks)} task tokens and {features} features (the {backbone.name} backbone's input "
                         f"{backbone.inputs}, flattened) exceed max_tokens={max_tokens}, one token per feature being for tabular inputs")
    encoder = MultiTabEncoder([t.name for t in tasks], features, dim, heads, layers, ff, mask)
    task_heads = slot_heads(tasks, dim)
    for head in task_heads.values():
        for module in head.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module)
    return MultiTaskModel(encoder, tasks, heads=task_heads)
