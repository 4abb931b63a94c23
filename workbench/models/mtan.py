"""The multi-task attention network (MTAN, Liu et al. 2019) under the model contract, as LibMTL builds it.

The backbone is the shared trunk, cut into its ``L`` stages (:meth:`~workbench.models.Backbone.make_stages`),
and each stage into its body ``b_l`` and its last block ``p_l`` (:func:`split_stage`). Stage ``l`` of the
trunk, from its input ``h_{l-1}`` (the sample ``x`` at ``l = 0``), gives the body's output ``u_l`` and the
stage's output ``s_l``, which is the next stage's input::

    u_l = b_l(h_{l-1}),   s_l = p_l(u_l),   h_l = s_l

Each task ``t`` has an attention module per stage, which reads ``u_l`` and, after the first stage, its own
feature of the stage before through the shared block ``f_{l-1}``; the mask it gives weighs the trunk's
output into the task's feature ``ẑ^l_t``::

    a^l_t = σ(BN(W^l_{t,2} ReLU(BN(W^l_{t,1} v^l_t)))),   v^0_t = P(u_0),   v^l_t = [P(u_l); P(f_{l-1}(ẑ^{l-1}_t))]
    ẑ^l_t = a^l_t ⊙ s_l,   z_t = vec(ẑ^{L-1}_t)

``[;]`` concatenates channels. On a spatial trunk (stages of ``(C, H, W)`` maps) the ``W`` are 1 × 1
convolutions and the ``BN`` 2-d batch norms, ``P`` is an adaptive max-pooling to ``s_l``'s height and width
(none where the sizes agree), and ``f_l`` is a ResNet basic block from ``s_l``'s channels to ``s_{l+1}``'s
(3 × 3 convolution, BN, ReLU, 3 × 3 convolution, BN, plus a 1 × 1 convolution and BN on the shortcut, then a
ReLU). On a vector trunk (stages of ``(C,)`` features, an MLP) the same with linear maps and 1-d batch norms,
and ``P`` is the identity. The mask has ``s_l``'s shape; its hidden width is ``C_l // reduction``, ``C_l``
being ``s_l``'s channels. With every ``a^l_t ≡ 1`` each ``ẑ^l_t`` is the trunk's own ``s_l``: hard sharing,
the task blocks then reaching no output.

This is LibMTL's ``_transform_resnet_MTAN`` on a ResNet (``tests/test_libmtl.py`` loads its weights into it
and gets its outputs) when the stages are its ``layer1`` to ``layer4`` (the stem in the first stage's body):
LibMTL splits each layer into ``layer[:-1]`` and ``layer[-1]`` and shares ``f_l`` across the tasks, as the
paper does (one feature extractor ``f`` per stage, applied to each task's feature). It max-pools a task's
feature by 2 after the first stage and then wherever its size differs from the body's, which on a ResNet
(every stage after the first halves the map) is what ``P`` does. LibMTL hard-codes the ResNet's widths
(64 to 512, times 4 for bottleneck blocks) and needs two blocks per layer or more; on a bottleneck ResNet it
uses a bottleneck block as ``f_l`` and ``reduction = 4``, where here ``f_l`` is always the basic block.

Generalised to any backbone, :func:`split_stage` cuts a stage (an ``nn.Sequential``) before its last layer
with parameters, that layer and the parameter-free layers after it (an activation, a pooling) being the last
block: a stage of one such layer (an MLP's Linear and ReLU, a CNN's convolution, ReLU and pooling) has an
empty body, so ``u_l`` is the stage's input ``h_{l-1}``; a stage that is not an ``nn.Sequential`` is its own
last block.

Under the contract ``Z`` is ``(B, T, C)``, ``C`` the backbone's flattened representation, and head ``t``
reads slot ``t``. The trunk and the blocks ``f_l`` are the shared parameters the gradient engine, the
conflict probe, the affinity probes and the aggregators see; each task's attention modules are its own. Task
``t``'s gradient reaches the trunk through its masks (``∂L_t/∂s_l`` is ``a^l_t ⊙ ∂L_t/∂ẑ^l_t``) and the blocks
through its own features: the conflict probe measures how the tasks, each through its attention, pull on the
trunk and the blocks; TAG's lookahead how a step of one task on them changes every task's loss. The saliency
probes read ``∂L_t/∂Z``, non-zero in slot ``t`` only: the saliency of the task's own attended feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.models.backbone import Backbone, stage_shapes
from workbench.models.mmoe import slot_heads
from workbench.tasks import MultiTaskModel, Task

__all__ = ["MTANEncoder", "MTANPass", "ResidualBlock", "attention_module", "mtan", "split_stage"]


def split_stage(stage: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """``(body, last block)`` of a stage, whose composition is the stage: an ``nn.Sequential`` is cut before its
    last layer with parameters (its trailing parameter-free layers go with it); any other module is its own last
    block. An empty body is the identity."""
    if not isinstance(stage, nn.Sequential):
        return nn.Sequential(), nn.Sequential(stage)
    layers = list(stage)
    cut = max((i for i, layer in enumerate(layers) if any(True for _ in layer.parameters())), default=0)
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def attention_module(in_features: int, hidden: int, out_features: int, spatial: bool) -> nn.Sequential:
    """MTAN's attention ``(B, in, ...) -> (B, out, ...)`` in ``(0, 1)``: 1 × 1 convolution (a linear map on vectors),
    BN, ReLU, 1 × 1 convolution, BN, sigmoid; LibMTL's ``_att_layer`` when ``spatial``."""
    linear = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if spatial else nn.Linear
    norm = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return nn.Sequential(linear(in_features, hidden), norm(hidden), nn.ReLU(), linear(hidden, out_features), norm(out_features), nn.Sigmoid())


class ResidualBlock(nn.Module):
    """``(B, in, ...) -> (B, out, ...)``: ``ReLU(BN(W_2 ReLU(BN(W_1 h))) + BN(W_s h))``, 3 × 3 convolutions and a 1 × 1
    shortcut without biases on maps (LibMTL's ``BasicBlock`` with its projection shortcut, same parameter names),
    linear maps on vectors."""

    def __init__(self, in_features: int, out_features: int, spatial: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        if spatial:
            self.conv1 = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1, bias=False)
            self.conv2 = nn.Conv2d(out_features, out_features, kernel_size=3, padding=1, bias=False)
            shortcut = nn.Conv2d(in_features, out_features, kernel_size=1, bias=False)
        else:
            self.conv1 = nn.Linear(in_features, out_features, bias=False)
            self.conv2 = nn.Linear(out_features, out_features, bias=False)
            shortcut = nn.Linear(in_features, out_features, bias=False)
        self.bn1, self.bn2 = norm(out_features), norm(out_features)
        self.downsample = nn.Sequential(shortcut, norm(out_features))

    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))) + self.downsample(h))


@dataclass(frozen=True)
class MTANPass:
    """One forward pass, stage by stage: the trunk's outputs ``shared[l]`` ``(B, *s_l)``, and per task its mask
    ``attention[l][task]`` and its feature ``features[l][task]`` (``a^l_t ⊙ s_l``), both of ``s_l``'s shape."""

    shared: list[Tensor]
    attention: list[dict[str, Tensor]]
    features: list[dict[str, Tensor]]


def _fit(h: Tensor, like: Tensor) -> Tensor:
    """``h`` max-pooled to ``like``'s height and width (``P``); as it is for vectors or where they agree."""
    if h.dim() == 2 or h.shape[-2:] == like.shape[-2:]:
        return h
    return F.adaptive_max_pool2d(h, like.shape[-2:])


class MTANEncoder(nn.Module):
    """``x -> Z`` of shape ``(B, T, C)``: the trunk's stages, each task's attention on every one of them.

    ``bodies[l]`` and ``last_blocks[l]`` are stage ``l`` split (:func:`split_stage`); ``body_widths[l]`` and
    ``widths[l]`` the channels of their outputs ``u_l`` and ``s_l``, ``spatial`` whether those are ``(C, H, W)`` maps
    (else ``(C,)`` vectors). ``blocks[l]`` (shared) maps a task's feature of stage ``l`` to stage ``l + 1``'s width.
    """

    def __init__(
        self, tasks: Sequence[str], bodies: Sequence[nn.Module], last_blocks: Sequence[nn.Module], body_widths: Sequence[int],
        widths: Sequence[int], spatial: bool, reduction: int = 1,
    ) -> None:
        super().__init__()
        self.task_order = list(tasks)
        self.bodies, self.last_blocks = nn.ModuleList(bodies), nn.ModuleList(last_blocks)
        self.blocks = nn.ModuleList(ResidualBlock(widths[l], widths[l + 1], spatial) for l in range(len(widths) - 1))
        self.attention = nn.ModuleDict({
            task: nn.ModuleList(
                attention_module(body_widths[l] + (widths[l] if l else 0), widths[l] // reduction, widths[l], spatial) for l in range(len(widths))
            )
            for task in tasks
        })

    def forward(self, x: Tensor) -> Tensor:
        last = self.trace(x).features[-1]
        return torch.stack([last[task].flatten(1) for task in self.task_order], dim=1)

    def trace(self, x: Tensor) -> MTANPass:
        """The trunk's outputs, each task's masks and features, stage by stage (see :class:`MTANPass`)."""
        shared: list[Tensor] = []
        attention: list[dict[str, Tensor]] = []
        features: list[dict[str, Tensor]] = []
        h, previous = x, {}
        for l, (body, last) in enumerate(zip(self.bodies, self.last_blocks)):
            u = body(h)
            h = last(u)
            u = _fit(u, h)
            attention.append({})
            features.append({})
            for task in self.task_order:
                inputs = u if l == 0 else torch.cat([u, _fit(previous[task], h)], dim=1)
                attention[l][task] = self.attention[task][l](inputs)
                features[l][task] = attention[l][task] * h
                if l < len(self.blocks):
                    previous[task] = self.blocks[l](features[l][task])
            shared.append(h)
        return MTANPass(shared, attention, features)

    def task_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each task's attention modules."""
        return {task: [(f"attention.{task}.{name}", p) for name, p in self.attention[task].named_parameters()] for task in self.task_order}


def mtan(tasks: Sequence[Task], backbone: Backbone, reduction: int = 1) -> MultiTaskModel:
    """MTAN on ``backbone``'s stages (see the module docstring), the attention's hidden width ``C_l // reduction``,
    a linear head per task on its slot."""
    if backbone.inputs is None:
        raise ValueError(f"mtan sizes its attention from a forward pass of one sample through the stages, which the {backbone.name} backbone's "
                         "named inputs do not allow")
    split = [split_stage(stage) for stage in backbone.make_stages("mtan")]
    bodies, last_blocks = [b for b, _ in split], [p for _, p in split]
    through = stage_shapes([module for pair in split for module in pair], backbone.inputs)  # the input, then u_0, s_0, u_1, s_1, …
    shapes = list(zip(through[1::2], through[2::2]))  # (u_l, s_l) per stage
    ranks = {len(shape) for pair in shapes for shape in pair}
    if ranks not in ({1}, {3}):
        raise ValueError(f"mtan: the {backbone.name} backbone's stage bodies and stages must all give vectors (C,) or all maps (C, H, W), "
                         f"got {shapes}")
    widths = [s[0] for _, s in shapes]
    if not 1 <= reduction <= min(widths):
        raise ValueError(f"mtan: reduction, which divides a stage's width into the attention's hidden width, must lie in [1, {min(widths)}] "
                         f"(the narrowest stage of {widths}), got {reduction}")
    encoder = MTANEncoder([t.name for t in tasks], bodies, last_blocks, [u[0] for u, _ in shapes], widths, ranks == {3}, reduction)
    return MultiTaskModel(encoder, tasks, heads=slot_heads(tasks, math.prod(backbone.shape)))
