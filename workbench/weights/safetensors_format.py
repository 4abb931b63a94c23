"""The safetensors file format: a header read and validated as the reference implementation does, and one written.

A file is an 8-byte little-endian header length n, n bytes of UTF-8 JSON, then the tensor data. The
header is an object: an optional ``"__metadata__"`` (an object of strings, or null) and, for every
tensor, ``{"dtype": CODE, "shape": [d, ...], "data_offsets": [start, end]}`` with byte offsets into
the data. :func:`read_header` accepts a header exactly when the ``safetensors`` library (0.8) does:

- n is at most 100,000,000 and the header lies within the file; the header is UTF-8 JSON (no NaN);
- the top level is an object, ``__metadata__`` maps strings to strings, every tensor entry is an
  object with a known dtype, a shape of non-negative integers and exactly two non-negative integer
  offsets (other fields are ignored);
- sorted by their offsets, the tensors tile the data: the first starts at 0, each starts where the
  previous one ended, and each spans shape × dtype size bytes (no overlap, no gap, no short span);
- the last tensor ends where the file ends (a truncated or padded file is refused).

Every refusal is a ``ValueError`` naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DTYPES", "DTYPE_CODES", "MAX_HEADER_BYTES", "TensorEntry", "Header", "read_header", "encode_header"]

# Every dtype code of the format that torch holds one element per entry of; the packed sub-byte
# codes F4, F6_E2M3 and F6_E3M2 (which the format also knows) are refused by name.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "C64": torch.complex64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
_PACKED = {"F4", "F6_E2M3", "F6_E3M2"}
MAX_HEADER_BYTES = 100_000_000
_LARGEST = 2**64 - 1  # offsets and sizes are 64-bit in the format


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header: its shape, dtype and where its bytes start and end in the data."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated header: the tensors in the header's order, the metadata, and the file offset where the data starts."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] | None
    data_start: int


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LARGEST


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _entry(path: Path, name: str, entry: object) -> TensorEntry:
    """One tensor's entry checked field by field (its span is checked against the others later)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: its header entry is a {type(entry).__name__}, not an object")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in entry]
    if missing:
        raise ValueError(f"{where}: its header entry lacks {missing}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if isinstance(code, str) and code in _PACKED:
        raise ValueError(f"{where} has dtype {code}, packed below a byte per entry, which the workbench does not read")
    if not isinstance(code, str) or code not in DTYPES:
        raise ValueError(f"{where} has dtype {code!r}, which is not a safetensors dtype (known: {sorted(DTYPES)})")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise ValueError(f"{where} has shape {shape!r}: a shape is a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets):
        raise ValueError(f"{where} has data_offsets {offsets!r}: they are two non-negative integers, [start, end]")
    return TensorEntry(tuple(shape), DTYPES[code], offsets[0], offsets[1])


def _check_tiling(path: Path, tensors: Mapping[str, TensorEntry], data_bytes: int) -> None:
    """Refuse tensors that do not tile the data exactly, in the order of their offsets."""
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != position or entry.end < entry.start:
            raise ValueError(
                f"{path}: tensor {name!r} has data_offsets [{entry.start}, {entry.end}], but the previous tensor ends at {position} "
                "(tensors must follow each other without overlap or gap)"
            )
        size = math.prod(entry.shape) * entry.dtype.itemsize
        if size > _LARGEST:
            raise ValueError(f"{path}: tensor {name!r} of shape {list(entry.shape)} is too large for the format")
        if entry.end - entry.start != size:
            raise ValueError(
                f"{path}: tensor {name!r} spans {entry.end - entry.start} bytes, but shape {list(entry.shape)} of "
                f"{DTYPE_CODES[entry.dtype]} needs {size}"
            )
        if entry.end > data_bytes:
            raise ValueError(f"{path} ends inside tensor {name!r} (data bytes {entry.start}..{entry.end}, the file holds {data_bytes}): the file is truncated")
        position = entry.end
    if position != data_bytes:
        raise ValueError(f"{path} holds {data_bytes - position} bytes after its last tensor, which its header does not describe")


def read_header(path: str | os.PathLike) -> Header:
    """The validated header of the safetensors file at ``path`` (rules in the module docstring)."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (a header of {length} bytes; the format allows {MAX_HEADER_BYTES})")
        if 8 + length > file_size:
            raise ValueError(f"{path} is not a safetensors file (its header of {length} bytes runs past the end of the file)")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path} is not a safetensors file (its header is not UTF-8 JSON: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError(f"{path}: __metadata__ must map strings to strings, got {metadata!r:.200}")
    tensors = {name: _entry(path, name, entry) for name, entry in header.items()}
    _check_tiling(path, tensors, file_size - 8 - length)
    return Header(tensors, metadata, 8 + length)


def encode_header(tensors: Sequence[tuple[str, tuple[int, ...], torch.dtype]], metadata: Mapping[str, str] | None = None) -> bytes:
    """The length prefix and header for ``(name, shape, dtype)`` tensors stored one after another in this order, padded to 8 bytes."""
    entries, position = {}, 0
    for name, shape, dtype in tensors:
        size = math.prod(shape) * dtype.itemsize
        entries[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [position, position + size]}
        position += size
    header = {"__metadata__": dict(metadata)} if metadata else {}
    header.update(entries)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded
