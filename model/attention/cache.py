"""The KV cache: keys and values of a batch of rows, by position, per layer, and the segments a
forward reads from it (a prefix every row shares, held once, and each row's own keys)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

@dataclass(frozen=True)
class KVSegment:
    """Keys and values of consecutive positions start, start + 1, ... ([Bk, n, kv_heads, hd]);
    shared: Bk is 1 and the segment serves every row of the batch."""

    keys: Tensor
    values: Tensor
    start: int
    shared: bool = False


class KVCache:
    """Keys and values of a batch of rows, by position, per layer.

    Every row holds positions [0, lengths[b]). A prefix all rows share (load_prefix) is held once
    for the batch, by reference: positions [0, start). Each row's own positions [start, ...) live
    in preallocated storage [B, capacity, kv_heads, hd] per layer (flash-attn's layout). `update`
    and `segments` are the only code that turns a position into a storage index.
    """

    def __init__(self, num_layers: int, batch_size: int, capacity: int, kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device, scratch: bool = False):
        """scratch: one storage serves every layer, for a single forward whose keys nobody reads
        afterwards (scoring after a shared prefix): each layer writes its keys, attends, and the
        next layer overwrites them. A 16K-token scoring batch of the 0.5B model in bf16 holds
        8 MiB of keys instead of 24 layers' 192 MiB."""
        shape = (batch_size, capacity, kv_heads, head_dim)
        stores = 1 if scratch else num_layers
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(stores)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(stores)]
        self.keys = keys * num_layers if scratch else keys
        self.values = values * num_layers if scratch else values
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.host_lengths = [0] * batch_size  # the same, on the host: no sync to size a forward
        self.alphas: list[float] = [1.0] * batch_size  # NTK alpha fixed at the cache-less call
        self.capacity = capacity  # own positions each row can hold after the shared prefix
        self.start = 0  # the first position the rows' own storage holds
        self.prefix: list[tuple[Tensor, Tensor]] | None = None  # per layer [1, start, kv_heads, hd]

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:  # the positions a row can hold in all
        return self.start + self.capacity

    @property
    def empty(self) -> bool:
        """No row holds any position yet (the next forward is the fresh phase)."""
        return self.prefix is None and not any(self.host_lengths)

    def reset(self) -> None:
        self.lengths.zero_()
        self.host_lengths = [0] * self.batch_size

    def load_prefix(self, keys: list[Tensor], values: list[Tensor], alpha: float) -> None:
        """Start every row with one shared prefix ([1, P, kv_heads, hd] per layer), by reference.

        Attention reads the prefix once per step for the whole batch instead of once per row
        (decoding after GSM8K's 8 shots is bound by reading the KV cache), and the rows' storage
        only holds what follows it (capacity counts the tokens after the prefix).
        """
        self.prefix = list(zip(keys, values))
        self.start = keys[0].shape[1]
        self.lengths.fill_(self.start)
        self.host_lengths = [self.start] * self.batch_size
        self.alphas = [alpha] * self.batch_size

    @classmethod
    def stacked(cls, caches: list["KVCache"], room: int) -> "KVCache":
        """One cache holding the rows of `caches` in order, with room for `room` more positions
        after its longest row: rows prefilled apart (after different prefixes, or a running
        batch and newcomers) then decode as one batch. A prefix all of them read by reference
        (the same tensors) stays shared; otherwise every row gets its own copy of its prefix.

        The caches given are consumed: the new storage is made a layer at a time and each layer
        of theirs is released once copied, so the old and the new rows never coexist whole (the
        peak is the larger of the two plus one layer, not their sum)."""
        first = caches[0]
        shared = first.prefix is not None and all(
            c.prefix is not None and c.start == first.start
            and all(a[0].data_ptr() == b[0].data_ptr() for a, b in zip(c.prefix, first.prefix)) for c in caches[1:])
        start = first.start if shared else 0
        k0 = first.keys[0]
        longest = max(n for c in caches for n in c.host_lengths)
        rows = sum(c.batch_size for c in caches)
        out = cls(0, rows, longest - start + room, k0.shape[2], k0.shape[3], dtype=k0.dtype, device=k0.device)
        if shared:
            out.prefix, out.start = first.prefix, start
        for layer in range(len(first.keys)):
            for side, (store, name) in enumerate(((out.keys, "keys"), (out.values, "values"))):
                dst = torch.zeros((rows, out.capacity, *k0.shape[2:]), dtype=k0.dtype, device=k0.device)
                row = 0
                for c in caches:
                    n, own, at = c.batch_size, max(c.host_lengths) - c.start, c.start - start
                    if c.prefix is not None and not shared:
                        dst[row:row + n, :c.start] = c.prefix[layer][side]  # [1, P] to every row
                    dst[row:row + n, at:at + own] = getattr(c, name)[layer][:, :own]
                    getattr(c, name)[layer] = None  # consumed
                    row += n
                store.append(dst)
        out.lengths = torch.cat([c.lengths for c in caches])
        out.host_lengths = [n for c in caches for n in c.host_lengths]
        out.alphas = [a for c in caches for a in c.alphas]
        return out

    def update(self, layer: int, positions: Tensor, keys: Tensor, values: Tensor) -> None:
        """Write keys and values [B, T, kv_heads, hd] at positions [B, T] (each >= start)."""
        b, t = positions.shape
        rows = torch.arange(b, device=positions.device)[:, None].expand(b, t)
        cols = positions - self.start
        self.keys[layer][rows, cols] = keys
        self.values[layer][rows, cols] = values

    def segments(self, layer: int, kv_len: int) -> list[KVSegment]:
        """What a forward whose positions end below kv_len reads: the shared prefix, if any, and
        each row's own keys up to position kv_len - 1."""
        own = KVSegment(self.keys[layer][:, :kv_len - self.start], self.values[layer][:, :kv_len - self.start],
                        self.start)
        if self.prefix is None:
            return [own]
        k, v = self.prefix[layer]
        return [KVSegment(k, v, 0, shared=True), own]

    def advance(self, lengths: Tensor | None, t: int) -> None:
        """After a forward of t new tokens per row, `lengths` of them real (None: all t)."""
        if lengths is None:
            self.lengths += t
            self.host_lengths = [n + t for n in self.host_lengths]
        else:
            self.lengths += lengths
            self.host_lengths = [n + int(m) for n, m in zip(self.host_lengths, lengths.tolist())]

    def keep_rows(self, rows: Tensor | list[int]) -> None:
        """Keep only these rows, in this order: new row i is old row rows[i] (decoding continues
        with them). Storage is not reallocated: only rows that change place are copied, in place,
        and only the positions they hold; the storage then views its first len(rows) rows. (The
        engine keeps the survivors in order, so the rows before the first finished one stay put:
        moving the last rows into the holes would copy less, but a row's place in the batch can
        change a matmul's rounding, and with it an answer.)"""
        rows = [int(r) for r in (rows.tolist() if isinstance(rows, Tensor) else rows)]
        moved = [(i, r) for i, r in enumerate(rows) if i != r]
        filled = max((self.host_lengths[r] for _, r in moved), default=self.start) - self.start
        if moved and filled > 0:
            device = self.lengths.device
            dst = torch.tensor([i for i, _ in moved], device=device)
            src = torch.tensor([r for _, r in moved], device=device)
            for store in (self.keys, self.values):
                for s in store:
                    s[dst, :filled] = s[src, :filled]  # the right side is gathered before the write
        index = torch.tensor(rows, device=self.lengths.device)
        n = len(rows)
        self.keys = [k[:n] for k in self.keys]
        self.values = [v[:n] for v in self.values]
        self.lengths = self.lengths.index_select(0, index)
        self.host_lengths = [self.host_lengths[r] for r in rows]
        self.alphas = [self.alphas[r] for r in rows]
