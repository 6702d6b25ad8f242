"""The GGUF file layout (llama.cpp's ggml/docs/gguf.md, versions 2 and 3, little-endian), read
directly: the metadata as Python values, the tensor table, and each tensor's bytes as a view of
one read-only memory map.

    header    b"GGUF", version u32, tensor count u64, metadata count u64
    metadata  key (string), value type u32, value; strings are u64 length + UTF-8 bytes; an
              array is its element type u32, count u64, then the elements
    tensors   name (string), n_dims u32, dims u64 x n_dims (innermost first), type u32, offset u64
    data      from the first `general.alignment` (default 32) boundary after the table; each
              tensor at data start + its offset

Why not gguf's GGUFReader: it turns every element of every metadata array into a numpy view of
its own, about 450K of them for a 152K-token vocabulary: 0.5 GB and several seconds before the
first weight is read. Here a string array is one list of str and a numeric array one numpy read.
The gguf package still names the tensor types and dequantizes them.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}
NUMPY_TYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
               11: "<i8", 12: "<f8"}
PLAIN_TENSOR_TYPES = {0: np.float32, 1: np.float16}  # F32, F16: read as they are, not dequantized


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands (the message says where)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF's order, innermost first
    type: int  # a gguf.GGMLQuantizationType value
    offset: int  # from the start of the file
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """torch's order, outermost first."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]  # every key; arrays as lists, except numeric ones as numpy arrays
    tensors: list[TensorInfo]
    buffer: mmap.mmap

    def tensor_data(self, t: TensorInfo) -> np.ndarray:
        """A read-only view of the tensor's bytes: F32 / F16 as their values in torch's shape;
        any other type as uint8 rows [outer dims..., bytes per row], the layout gguf's
        dequantize takes."""
        raw = np.frombuffer(self.buffer, dtype=np.uint8, count=t.n_bytes, offset=t.offset)
        if t.type in PLAIN_TENSOR_TYPES:
            return raw.view(PLAIN_TENSOR_TYPES[t.type]).reshape(t.shape)
        return raw.reshape((*t.shape[:-1], -1))

    def release(self, t: TensorInfo) -> None:
        """Drop the mapped pages of a tensor already copied (they count as resident until then)."""
        start = t.offset // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            self.buffer.madvise(mmap.MADV_DONTNEED, start, t.offset + t.n_bytes - start)
        except (AttributeError, OSError, ValueError):  # no madvise on this platform: pages stay cached
            pass


def read_gguf(path: Path) -> GGUFFile:
    """Map the file and read its header; GGUFFormatError says what is wrong and where."""
    from gguf.constants import GGML_QUANT_SIZES

    with open(path, "rb") as f:
        try:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise GGUFFormatError("the file is empty") from None
    cursor = _Cursor(buffer)
    try:
        if cursor.take(4) != MAGIC:
            raise GGUFFormatError("it does not start with the GGUF magic bytes")
        version = cursor.scalar("<I")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = " (a big-endian file)" if swapped in VERSIONS else ""
            raise GGUFFormatError(f"GGUF version {version}{hint}; this reader reads little-endian versions "
                                  f"{' and '.join(map(str, VERSIONS))}")
        n_tensors, n_keys = cursor.scalar("<Q"), cursor.scalar("<Q")
        metadata = {}
        for _ in range(n_keys):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.scalar("<I"))
        table = []
        for _ in range(n_tensors):
            name = cursor.string()
            dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
            table.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
    except (struct.error, IndexError):
        raise GGUFFormatError(f"its header ends early (at byte {cursor.pos:,} of {len(buffer):,})") from None
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1:
        raise GGUFFormatError(f"general.alignment is {alignment!r}, not a positive whole number")
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, dims, kind, offset in table:
        if kind not in GGML_QUANT_SIZES:
            raise GGUFFormatError(f"tensor {name} has type id {kind}, unknown to the installed gguf package")
        block, block_bytes = GGML_QUANT_SIZES[kind]
        n_bytes = int(np.prod(dims, dtype=np.int64)) // block * block_bytes
        tensors.append(TensorInfo(name, dims, kind, data_start + offset, n_bytes))
    return GGUFFile(path, version, metadata, tensors, buffer)


class _Cursor:
    """Little-endian reads from a position in the mapped file."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer, self.pos = buffer, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buffer):
            raise IndexError
        out = self.buffer[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (a vocabulary: the one loop worth writing out)."""
        buffer, pos, unpack, out = self.buffer, self.pos, struct.Struct("<Q").unpack_from, []
        try:
            for _ in range(count):
                (n,) = unpack(buffer, pos)
                out.append(buffer[pos + 8:pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except UnicodeDecodeError:
            raise GGUFFormatError(f"a string at byte {pos:,} is not UTF-8") from None
        if pos > len(buffer):
            raise IndexError
        self.pos = pos
        return out

    def value(self, kind: int) -> Any:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            element, count = self.scalar("<I"), self.scalar("<Q")
            if element in NUMPY_TYPES:  # one read for the whole array
                dtype = np.dtype(NUMPY_TYPES[element])
                if self.pos + count * dtype.itemsize > len(self.buffer):
                    raise IndexError
                values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).copy()
                self.pos += count * dtype.itemsize
                return values
            if element == STRING:
                return self.strings(count)
            return [self.value(element) for _ in range(count)]
        if kind in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[kind])
        raise GGUFFormatError(f"metadata value type {kind} at byte {self.pos:,} is not a GGUF type")
