"""Task vectors τ_t = θ_t − θ_0 of checkpoints of one base: read chunk by chunk, trimmed by magnitude, masked.

The merge methods (:mod:`workbench.merge`) and the task-vector probes (:mod:`workbench.probes.task_vectors`)
share these pieces:

- :func:`task_vector_chunks` streams one tensor's task vectors as (T, chunk) blocks, so that work on a
  tensor holds T chunks at a time rather than T copies of the tensor.
- :func:`magnitude_thresholds` finds each task's k-th largest |τ_t| over any set of tensors exactly,
  without sorting: a random sample of positions brackets the k-th value, one pass counts the entries
  above the bracket and keeps those inside it (about 3% of the entries), and the k-th value is
  selected among those. Trimming keeps the entries whose magnitude reaches the threshold (all of them
  when several tie at the k-th place).
- :class:`TaskMasks` stores boolean masks over task vectors bit-packed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from workbench.weights.state_dicts import MemoryWeights, Weights, write_state_dict

__all__ = ["CHUNK", "READ_CHUNKS", "work_dtype", "task_vectors", "task_vector_chunks", "streaming_threads", "magnitude_bits", "sorts_by_bits", "sorted_places", "magnitude_thresholds", "trim", "TaskMasks"]

# Entries per task in one chunk: T × 2^16 float32 entries (2 MiB at T = 8) stay in the processor's cache.
CHUNK = 1 << 16
# Below this many entries per task the thresholds come from selecting among all of them.
EXACT_UP_TO = 1 << 18
SAMPLE = 1 << 15
# Chunks read at once from a file: 2^20 entries per input (4 MiB of float32) make few, large reads.
READ_CHUNKS = 16
# Threads reading the inputs' next blocks side by side (a deeper queue of reads is faster on virtual and network disks).
READERS = 4


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype task vectors are computed in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def task_vectors(base: Tensor | None, tasks: Sequence[Tensor]) -> Tensor:
    """τ stacked: shape (T, *tensor shape), float32 (float64 for float64 inputs); θ_0 = 0 without a base."""
    dtype = work_dtype(tasks[0].dtype)
    stacked = torch.stack([t.to(dtype) for t in tasks])
    return stacked - base.to(dtype) if base is not None else stacked


def task_vector_chunks(
    base: Weights | None, tasks: Sequence[Weights], key: str, chunk: int | None = None
) -> Iterator[tuple[int, int, Tensor | None, Tensor]]:
    """(start, stop, θ_0 part of shape (c,) or None, τ part of shape (T, c)) over the flattened tensor ``key``, c ≤ ``chunk`` (default :data:`CHUNK`).

    c is a multiple of 4 except in the last chunk (the DARE masks take 16-bit words four at a time). The parts are in the work dtype and live in buffers reused by the next step: use them (or copy
    them) before asking for the next chunk. Without a base, τ_t = θ_t.

    Inputs read from disk are read :data:`READ_CHUNKS` chunks at a time, one block ahead, by up to :data:`READERS`
    threads while the caller works on the current block (two sets of read buffers take turns). Those threads only read:
    their positioned reads release the interpreter's lock, and the tensor arithmetic stays on the caller's thread (see
    :func:`streaming_threads` for the cores it leaves the reads).
    """
    inputs = ([base] if base is not None else []) + list(tasks)
    n = tasks[0].numel(key)
    dtype = work_dtype(tasks[0].spec(key)[1])
    size = max(1, min(max(4, (chunk or CHUNK) // 4 * 4), n))
    on_disk = [i for i, checkpoint in enumerate(inputs) if not checkpoint.in_memory]
    block = min(n, size * READ_CHUNKS) if on_disk else n
    blocks = range(0, n, block)
    slots = 2 if on_disk and len(blocks) > 1 else 1
    read_buffers = [{i: torch.empty(block, dtype=inputs[i].spec(key)[1]) for i in on_disk} for _ in range(slots)]
    tau, work_buffer = torch.empty(len(tasks), size, dtype=dtype), torch.empty(size, dtype=dtype)
    base_buffer = torch.empty(size, dtype=dtype) if base is not None else None

    def read(first: int, slot: int, i: int) -> Tensor:
        """Input ``i``'s entries of the block from ``first`` in its stored dtype, in its buffer of ``slot``."""
        last = min(n, first + block)
        return inputs[i].read(key, first, last, out=read_buffers[slot][i][: last - first])

    def parts(first: int, read_in: dict[int, Tensor]) -> Iterator[tuple[int, int, Tensor | None, Tensor]]:
        """The chunks of the block from ``first``, whose on-disk inputs are ``read_in``."""
        for start in range(first, min(n, first + block), size):
            stop = min(n, start + size)
            c = stop - start

            def entries(i: int, buffer: Tensor) -> Tensor:  # input i's entries in the work dtype (a view where it can)
                part = read_in[i][start - first : stop - first] if i in read_in else inputs[i].read(key, start, stop)
                return part if part.dtype == dtype else buffer[:c].copy_(part)

            theta0 = entries(0, base_buffer) if base is not None else None
            for t in range(len(tasks)):
                theta = entries(t + (base is not None), work_buffer)
                if theta0 is None:
                    tau[t, :c].copy_(theta)
                else:
                    torch.sub(theta, theta0, out=tau[t, :c])
            yield start, stop, theta0, tau[:, :c]

    if slots == 1:
        for first in blocks:
            yield from parts(first, {i: read(first, 0, i) for i in on_disk})
        return
    with ThreadPoolExecutor(max_workers=min(len(on_disk), READERS), thread_name_prefix="workbench-read") as readers:
        pending = {i: readers.submit(read, blocks[0], 0, i) for i in on_disk}
        try:
            for index, first in enumerate(blocks):
                read_in = {i: future.result() for i, future in pending.items()}
                if index + 1 < len(blocks):
                    pending = {i: readers.submit(read, blocks[index + 1], (index + 1) % 2, i) for i in on_disk}
                yield from parts(first, read_in)
        finally:
            for future in pending.values():
                future.cancel()


@contextlib.contextmanager
def streaming_threads(checkpoints: Sequence[Weights | None]) -> Iterator[None]:
    """While inside, when any of ``checkpoints`` is read from disk, torch's parallel operations leave one core to
    :func:`task_vector_chunks`' reading thread (on two cores: one thread; parallel operations on small chunks beside
    the reads made the arithmetic 4× slower on such a machine); unchanged otherwise."""
    threads = torch.get_num_threads()
    streamed = any(c is not None and not c.in_memory for c in checkpoints)
    if streamed:
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - 1)))
    try:
        yield
    finally:
        if streamed:
            torch.set_num_threads(threads)


def magnitude_bits(magnitudes: Tensor) -> np.ndarray:
    """The CPU tensor ``magnitudes`` (finite, not negative, float32 or float64) as a NumPy array of the integers of the
    same width: they order as the magnitudes do, and NumPy sorts and selects them faster than floats (and faster than
    torch's sort and ``kthvalue``, by 2.5 to 3 times on this workbench's machines)."""
    width = {torch.float32: np.int32, torch.float64: np.int64}.get(magnitudes.dtype)
    if width is None:
        raise TypeError(f"magnitude_bits reads float32 or float64 magnitudes, got {magnitudes.dtype}")
    return magnitudes.numpy().view(width)


def sorts_by_bits(magnitudes: Tensor) -> bool:
    """Whether :func:`magnitude_bits` applies: a CPU tensor of float32 or float64."""
    return magnitudes.device.type == "cpu" and magnitudes.dtype in (torch.float32, torch.float64)


def sorted_places(values: Tensor, places: Sequence[int], sample: int = SAMPLE, seed: int = 0) -> Tensor:
    """The entries at the 0-based ``places`` of the ascending order of the 1-D CPU tensor ``values`` (finite, float32 or
    float64): shape ``(len(places),)``, ``values``' dtype.

    Exact, as :func:`magnitude_thresholds` finds its thresholds: above :data:`EXACT_UP_TO` entries a seeded sample of
    ``sample`` entries brackets each place (±5 binomial standard deviations of its rank, plus 10); one pass counts the
    entries below the bracket and keeps those inside it (about 10/√sample of them), among which the place is selected. A
    bracket that misses (the count says so) falls back to selecting among all entries; so do small tensors, by NumPy's
    partition of their bits (:func:`magnitude_bits`)."""
    n = values.numel()
    array = values.numpy()
    if n <= EXACT_UP_TO:
        return torch.from_numpy(np.partition(magnitude_bits(values), list(places))[list(places)].view(array.dtype))
    drawn = np.sort(array[np.random.default_rng(seed).integers(0, n, sample)])
    found = []
    for place in places:
        fraction = (place + 0.5) / n
        margin = 5 * math.sqrt(sample * fraction * (1 - fraction)) + 10
        low_rank, high_rank = math.floor(fraction * sample - margin), math.ceil(fraction * sample + margin)
        low = drawn[low_rank] if low_rank >= 0 else -np.inf
        high = drawn[high_rank] if high_rank < sample else np.inf
        need = place - int(np.count_nonzero(array < low))
        inside = array[(array >= low) & (array <= high)]  # boolean indexing copies
        found.append(np.partition(inside, need)[need] if 0 <= need < len(inside) else np.partition(array, place)[place])
    return torch.tensor(np.array(found, dtype=array.dtype))


def _kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest entry of the 1-D ``values`` (1 ≤ k ≤ len)."""
    return values.topk(k, sorted=False).values.min()


def magnitude_thresholds(
    base: Weights | None, tasks: Sequence[Weights], keys: Sequence[str], density: float, sample: int = SAMPLE, seed: int = 0
) -> Tensor:
    """Each task's k-th largest |τ_t| over the tensors ``keys`` (P entries in all, k = max(1, ⌊density · P⌋)): shape (T,).

    Exact. With more than 2^18 entries: the |τ_t| at ``sample`` random positions (seeded) give a
    bracket [lo_t, hi_t] that holds the k-th value with overwhelming probability (±5 binomial standard
    deviations of the sample's rank, plus 10); one pass counts the entries above hi_t and keeps those
    in the bracket, among which the k-th value is selected. When the bracket misses (the count says
    so), that task falls back to selecting among all its entries. Holds the bracketed entries, about
    10/√sample of P per task, and T × ``sample`` values.
    """
    sizes = [tasks[0].numel(key) for key in keys]
    total = sum(sizes)
    k = max(1, int(density * total))
    if total <= EXACT_UP_TO:
        return _exact_thresholds(base, tasks, keys, k, range(len(tasks)))
    lo, hi = _sample_bracket(base, tasks, keys, sizes, k / total, sample, seed)
    above = torch.zeros(len(tasks), dtype=torch.float64)
    bracketed: list[list[Tensor]] = [[] for _ in tasks]
    magnitude = scratch = None
    for key in keys:
        for _, _, _, tau in task_vector_chunks(base, tasks, key):
            if magnitude is None or magnitude.shape != tau.shape:
                magnitude, scratch = torch.empty_like(tau), torch.empty_like(tau)
            torch.abs(tau, out=magnitude)
            above += torch.sub(magnitude, hi, out=scratch).relu_().sign_().sum(1)  # float ops: much faster here than comparisons
            values = magnitude.numpy()
            inside = (values >= lo.numpy()) & (values <= hi.numpy())
            for t in range(len(tasks)):
                bracketed[t].append(torch.from_numpy(values[t][inside[t]]))  # boolean indexing copies
    thresholds = torch.empty(len(tasks), dtype=work_dtype(tasks[0].spec(keys[0])[1]))
    missed = []
    for t, parts in enumerate(bracketed):
        need = k - round(float(above[t]))
        candidates = torch.cat(parts)
        if 1 <= need <= len(candidates):
            thresholds[t] = _kth_largest(candidates, need)
        else:
            missed.append(t)
    if missed:
        thresholds[missed] = _exact_thresholds(base, tasks, keys, k, missed)
    return thresholds


def _sample_bracket(base, tasks, keys, sizes, fraction: float, sample: int, seed: int) -> tuple[Tensor, Tensor]:
    """Bounds lo, hi of shape (T, 1) around each task's (fraction · P)-th largest magnitude, from ``sample`` random positions."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, sum(sizes), (sample,), generator=generator).sort().values
    ends = torch.tensor(sizes).cumsum(0)
    which = torch.bucketize(positions, ends, right=True)
    parts = []
    for i, key in enumerate(keys):
        local = positions[which == i] - (ends[i] - sizes[i])
        if len(local) == 0:
            continue
        dtype = work_dtype(tasks[0].spec(key)[1])
        theta0 = base.gather(key, local).to(dtype) if base is not None else 0
        parts.append(torch.stack([task.gather(key, local).to(dtype) - theta0 for task in tasks]).abs())
    ordered = torch.cat(parts, dim=1).sort(dim=1, descending=True).values
    margin = 5 * math.sqrt(sample * fraction * (1 - fraction)) + 10
    upper_rank, lower_rank = math.floor(fraction * sample - margin), math.ceil(fraction * sample + margin)
    hi = ordered[:, upper_rank - 1] if upper_rank >= 1 else torch.full((len(tasks),), math.inf, dtype=ordered.dtype)
    lo = ordered[:, lower_rank - 1] if lower_rank <= sample else torch.zeros(len(tasks), dtype=ordered.dtype)
    return lo.view(-1, 1), hi.view(-1, 1)


def _exact_thresholds(base, tasks, keys, k: int, which: Sequence[int]) -> Tensor:
    """The k-th largest |τ_t| over all entries of ``keys`` for each task t in ``which``: shape (len(which),); holds those tasks' magnitudes."""
    chosen = [tasks[t] for t in which]
    magnitudes = torch.cat([tau.abs() for key in keys for _, _, _, tau in task_vector_chunks(base, chosen, key)], dim=1)
    return torch.stack([_kth_largest(row, k) for row in magnitudes])


def trim(tau: Tensor, density: float) -> Tensor:
    """Each row τ_t of ``tau`` (shape (T, ...)) keeping the entries whose magnitude reaches its k-th largest, k = max(1, ⌊density · n⌋)."""
    flat = tau.reshape(len(tau), -1)
    rows = [MemoryWeights(f"task {t}", {"tau": row}) for t, row in enumerate(flat)]
    thresholds = magnitude_thresholds(None, rows, ["tau"], density)
    return (flat * (flat.abs() >= thresholds.to(flat.dtype).view(-1, 1))).reshape(tau.shape)


@dataclass
class TaskMasks:
    """Boolean masks m_t per tensor, bit-packed: ``packed[name]`` is uint8 of shape (T, ⌈n/8⌉) for a tensor of n entries."""

    tasks: list[str]
    shapes: dict[str, tuple[int, ...]]
    packed: dict[str, Tensor]

    @classmethod
    def pack(cls, tasks: Sequence[str], masks: Mapping[str, Tensor]) -> TaskMasks:
        """From boolean masks of shape (T, *tensor shape) per tensor name."""
        packed = {name: torch.from_numpy(np.packbits(m.reshape(len(m), -1).numpy(), axis=1)) for name, m in masks.items()}
        return cls(list(tasks), {name: tuple(m.shape[1:]) for name, m in masks.items()}, packed)

    def __getitem__(self, name: str) -> Tensor:
        """The masks of tensor ``name``: bool, shape (T, *tensor shape)."""
        shape = self.shapes[name]
        n = int(torch.Size(shape).numel())
        bits = np.unpackbits(self.packed[name].numpy(), axis=1, count=n).astype(bool)
        return torch.from_numpy(bits).reshape(len(self.tasks), *shape)

    def select(self, rows: Mapping[str, TaskMasks]) -> TaskMasks:
        """Masks whose row for task t comes from ``rows[t]`` (masks over the same tasks and tensors)."""
        packed = {name: torch.stack([rows[task].packed[name][i] for i, task in enumerate(self.tasks)]) for name in self.shapes}
        return TaskMasks(self.tasks, dict(self.shapes), packed)

    def nbytes(self) -> int:
        return sum(p.numel() for p in self.packed.values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the packed masks to a safetensors file (atomically)."""
        metadata = {"tasks": json.dumps(self.tasks), "shapes": json.dumps({n: list(s) for n, s in self.shapes.items()})}
        return write_state_dict(path, self.packed, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskMasks:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata() or {}
            if "tasks" not in metadata or "shapes" not in metadata:
                raise ValueError(f"{path} is a safetensors file but not a file of task masks (no tasks and shapes in its metadata)")
            packed = {name: opened.get_tensor(name) for name in opened.keys()}
        shapes = {name: tuple(shape) for name, shape in json.loads(metadata["shapes"]).items()}
        return cls(json.loads(metadata["tasks"]), shapes, packed)
