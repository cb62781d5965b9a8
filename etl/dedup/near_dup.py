"""Exact near-duplicate search over 64-bit perceptual hashes, linear in N up to tens of millions.

Pure numpy: no catalog, no DuckDB. Generalised pigeonhole: cut the 64 bits into `m` contiguous segments.
Two hashes within Hamming distance k differ in at most k segments, so at least `s = m - k` segments are
identical; every pair within k therefore shares the exact key formed by one of the C(m, s) s-subsets of
segments. For each subset we sort (key, index) packed into one uint64 and read candidate pairs off runs of
equal keys, then check the full 64-bit distance with a popcount. Nothing is approximate: a pair within k
is always found, and every reported pair is verified.

The layout trades the number of sorts (C(m, s)) against bucket crowding (N^2 / 2^key_bits candidates),
so it is chosen from N: `m = k + 1` (one segment must match, the classic band index) is cheapest for
thousands of hashes and quadratic beyond; larger `m` gives wider keys and stays linear for millions
(`plan_layout`; measured in bench/bench_dedup.py, figures in the README).

The search needs the hashes only in the order of a few segments' values (`prefix_groups`), one run of equal
values at a time, so the same search runs in memory (`near_pairs`) or over a sorted stream that a database
produces and spills (`stream_pairs`, used by the dedup stage): memory then holds a batch, not the corpus.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Cost constants measured on the 2-core dev machine (seconds per element); only their ratio matters.
_SORT_COST = 2.7e-8  # per hash and per subset: key building and the blocked 16-bit radix sort
_PAIR_COST = 8e-9  # per candidate pair: build, gather, xor, popcount, filter
_MAX_SEGMENTS = 16
_PAIR_CHUNK = 250_000  # candidate pairs verified per chunk: bounds memory under crowded keys
_SHORT_RUN = 32
_BLOCK = 32_768  # hashes per block in the self-join: a block and its keys stay in L2
_MAX_RUN_ROWS = 1 << 20  # expected hashes per prefix value that a streamed search holds at once


@dataclass(frozen=True)
class Layout:
    """`segments` contiguous bit ranges; pairs must agree exactly on `match` of them."""

    segments: int
    match: int

    @property
    def bounds(self) -> list[int]:
        return [round(i * 64 / self.segments) for i in range(self.segments + 1)]

    @property
    def subsets(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(self.segments), self.match))

    def key_bits(self, subset: tuple[int, ...]) -> int:
        b = self.bounds
        return sum(b[i + 1] - b[i] for i in subset)

    @property
    def min_key_bits(self) -> int:
        widths = sorted(hi - lo for lo, hi in itertools.pairwise(self.bounds))
        return sum(widths[: self.match])


def _index_bits(n: int) -> int:
    return max(1, math.ceil(math.log2(max(n, 2))))


def estimated_seconds(layout: Layout, n_left: int, n_right: int | None = None) -> float:
    """Cost model for one search: sorts plus expected candidates for uniformly spread hashes.

    Real hashes cluster (bursts, near-identical specimens), which only adds verified candidates; the
    model is for choosing a layout, not a promise.
    """
    n_sub = math.comb(layout.segments, layout.match)
    bucket = 2.0**-layout.min_key_bits
    if n_right is None:
        sort = n_left  # blocks stay in cache, so the sort term is linear in N
        pairs = n_left * n_left / 2 * bucket
    else:
        small, big = sorted((n_left, n_right))
        sort = small + big * math.log2(max(small, 2)) / 8  # searchsorted into the small side
        pairs = small * big * bucket
    return n_sub * (sort * _SORT_COST + pairs * _PAIR_COST)


def plan_layout(k: int, n_left: int, n_right: int | None = None) -> Layout:
    """The cheapest exact layout for distance <= k, by the cost model."""
    if not 0 <= k < _MAX_SEGMENTS:
        raise ValueError(f"distance k={k} outside 0..{_MAX_SEGMENTS - 1}")
    options = [
        (estimated_seconds(Layout(m, m - k), n_left, n_right), m) for m in range(k + 1, _MAX_SEGMENTS + 1)
    ]
    return Layout(min(options)[1], min(options)[1] - k)


def _keys(hashes: np.ndarray, layout: Layout, subset: tuple[int, ...]) -> np.ndarray:
    """Concatenate the subset's segments into one compact unsigned key."""
    b = layout.bounds
    key = np.zeros(hashes.shape[0], dtype=np.uint64)
    offset = 0
    for i in subset:
        lo, width = b[i], b[i + 1] - b[i]
        part = (hashes >> np.uint64(lo)) & np.uint64((1 << width) - 1)
        key |= part << np.uint64(offset)
        offset += width
    return key


def _run_pairs(sorted_keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Positions (p, q), p < q, of every pair inside each run of equal keys, in bounded chunks."""
    if sorted_keys.size < 2:
        return
    eq = sorted_keys[1:] == sorted_keys[:-1]
    if not eq.any():
        return
    in_run = np.zeros(sorted_keys.size, dtype=bool)
    in_run[1:] |= eq
    in_run[:-1] |= eq
    pos = np.flatnonzero(in_run)
    keys = sorted_keys[pos]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    lengths = np.diff(np.append(starts, keys.size))
    if lengths.max() <= _SHORT_RUN:
        # Common case, short runs: pair each member with the one d places on, for d = 1, 2, ...
        for d in range(1, int(lengths.max())):
            same = keys[d:] == keys[:-d]
            yield pos[:-d][same], pos[d:][same]
        return
    # Long runs (bursts, crowded keys): enumerate pairs run by run, a bounded number at a time.
    members = np.repeat(starts, lengths) + _offsets(lengths)
    partners = np.repeat(lengths, lengths) - 1 - _offsets(lengths)
    ends = np.cumsum(partners)
    first = 0
    while first < members.size:
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + _PAIR_CHUNK, side="right")))
        counts = partners[first:last]
        p = np.repeat(members[first:last], counts)
        q = p + 1 + _offsets(counts)
        first = last
        if p.size:
            yield pos[p], pos[q]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """0..L-1 for each length L, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    run_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - run_start


def _as_unsigned(hashes: np.ndarray) -> np.ndarray:
    hashes = np.ascontiguousarray(hashes)
    if hashes.dtype == np.int64:
        return hashes.view(np.uint64)
    return hashes.astype(np.uint64, copy=False)


def _sort_pack(keys: np.ndarray, key_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort keys; return (sorted keys, original positions)."""
    idx_bits = _index_bits(keys.size)
    if key_bits + idx_bits <= 64:
        # One plain sort of (key, index) packed together: about twice as fast as an argsort.
        packed = (keys << np.uint64(idx_bits)) | np.arange(keys.size, dtype=np.uint64)
        packed.sort()
        return packed >> np.uint64(idx_bits), (packed & np.uint64((1 << idx_bits) - 1)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], order


def _block_pairs(
    block: np.ndarray, k: int, layout: Layout, subsets: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """Verified pairs (local positions, as a 2 x P array) inside one block, for each subset."""
    bounds = layout.bounds
    segs = [
        (block >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1) for lo, hi in itertools.pairwise(bounds)
    ]
    found = []
    for subset in subsets:
        key = segs[subset[0]].copy()
        offset = bounds[subset[0] + 1] - bounds[subset[0]]
        for i in subset[1:]:
            key |= segs[i] << np.uint64(offset)
            offset += bounds[i + 1] - bounds[i]
        if offset > 16:
            # Fold to 16 bits: unequal keys may now collide, which only adds candidates that the popcount
            # check rejects; equal keys stay equal, so no pair is lost. 16-bit keys get numpy's radix sort,
            # 4-8x faster than a comparison sort of the full key.
            key ^= (key >> np.uint64(16)) ^ (key >> np.uint64(32)) ^ (key >> np.uint64(48))
        keys16 = key.astype(np.uint16)
        order = np.argsort(keys16, kind="stable")
        sorted_keys = keys16[order]
        for p, q in _run_pairs(sorted_keys):
            a, b = order[p], order[q]
            close = np.bitwise_count(block[a] ^ block[b]) <= k
            a, b = a[close], b[close]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)]))
    return found


def prefix_groups(
    layout: Layout, n: int, max_rows: int | None = None
) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """The subsets grouped by their first g segments (the "prefix"), with g the smallest for which the
    expected number of hashes sharing one prefix value is at most `max_rows`.

    A pair found by a subset agrees on its prefix, so each group is searched over hashes ordered by the
    prefix value, one run of equal values at a time: memory holds one run, not the corpus (see
    `stream_pairs`)."""
    max_rows = max_rows or _MAX_RUN_ROWS
    bounds = layout.bounds
    for g in range(1, layout.match + 1):
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for subset in layout.subsets:
            groups.setdefault(subset[:g], []).append(subset)
        narrowest = min(sum(bounds[i + 1] - bounds[i] for i in prefix) for prefix in groups)
        if n / 2.0**narrowest <= max_rows or g == layout.match:
            return list(groups.items())
    raise AssertionError("unreachable: g == layout.match returns")


def prefix_key(hashes: np.ndarray, layout: Layout, prefix: tuple[int, ...]) -> np.ndarray:
    """The prefix segments' bits of each hash as one integer (equal keys <=> equal prefix segments)."""
    return _keys(_as_unsigned(hashes), layout, prefix)


def prefix_order_sql(column: str, layout: Layout, prefix: tuple[int, ...]) -> str:
    """An ORDER BY list over a BIGINT hash column that puts equal prefix keys next to each other: one term per
    prefix segment (a whole-hash segment, at k = 0, is the column itself). DuckDB's >> on a signed value
    shifts in sign bits, which the mask removes."""
    b = layout.bounds
    terms = []
    for i in prefix:
        width = b[i + 1] - b[i]
        terms.append(column if width == 64 else f"(({column} >> {b[i]}) & {(1 << width) - 1})")
    return ", ".join(terms)


def sorted_pairs(
    ids: np.ndarray,
    hashes: np.ndarray,
    k: int,
    layout: Layout,
    prefix: tuple[int, ...],
    subsets: list[tuple[int, ...]],
    workers: int,
) -> np.ndarray:
    """Pairs within k among `hashes` (sorted so that equal prefix keys are adjacent) for `subsets` (all
    starting with `prefix`), as ids packed min<<32|max. `ids` are the hashes' ids (< 2^32).

    The rows are cut into blocks of about _BLOCK hashes that never split a prefix value, each searched on
    its own: a block and its keys stay in the CPU cache, which keeps the cost per hash flat in N."""
    h = _as_unsigned(hashes)
    if h.size < 2:
        return np.zeros(0, dtype=np.uint64)
    key = prefix_key(h, layout, prefix)
    ends = np.append(np.flatnonzero(key[1:] != key[:-1]) + 1, h.size)
    cuts = np.searchsorted(ends, np.arange(_BLOCK, h.size + _BLOCK, _BLOCK), side="left")
    block_ends = np.unique(np.append(ends[np.minimum(cuts, ends.size - 1)], h.size))
    spans = []
    start = 0
    for end in block_ends.tolist():
        if end - start >= 2:
            spans.append((start, end))
        start = end

    def run(span: tuple[int, int]) -> np.ndarray:
        start, end = span
        local = _block_pairs(h[start:end], k, layout, subsets)
        if not local:
            return np.zeros(0, dtype=np.uint64)
        ab = ids[start + np.concatenate(local, axis=1)].astype(np.uint64)
        return (np.minimum(ab[0], ab[1]) << np.uint64(32)) | np.maximum(ab[0], ab[1])

    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy sorts and gathers release the GIL
        parts = list(pool.map(run, spans))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def stream_pairs(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
    layout: Layout,
    prefix: tuple[int, ...],
    subsets: list[tuple[int, ...]],
    workers: int | None = None,
) -> Iterator[np.ndarray]:
    """`sorted_pairs` over (ids, hashes) batches in which equal prefix keys are adjacent (DuckDB reads
    `ORDER BY prefix_order_sql(...)` in record batches): the last prefix value of each batch is carried into the
    next, so no run is split and memory holds one batch plus one run. Yields packed pairs per batch."""
    workers = workers or min(2, os.cpu_count() or 1)
    carry_ids = np.zeros(0, dtype=np.int64)
    carry_h = np.zeros(0, dtype=np.uint64)
    for ids, hashes in batches:
        ids = np.concatenate([carry_ids, np.asarray(ids, dtype=np.int64)])
        h = np.concatenate([carry_h, _as_unsigned(hashes)])
        if h.size == 0:
            continue
        key = prefix_key(h, layout, prefix)
        other = np.flatnonzero(key != key[-1])
        cut = int(other[-1]) + 1 if other.size else 0
        if cut:
            yield sorted_pairs(ids[:cut], h[:cut], k, layout, prefix, subsets, workers)
        carry_ids, carry_h = ids[cut:], h[cut:]
    if carry_h.size >= 2:
        yield sorted_pairs(carry_ids, carry_h, k, layout, prefix, subsets, workers)


def _self_pairs(h: np.ndarray, k: int, layout: Layout, workers: int) -> np.ndarray:
    """Pairs within k inside h (in memory), packed as i<<32|j with i < j: each prefix group's search over
    the hashes sorted by its prefix (the same search `stream_pairs` runs over a DuckDB sort)."""
    parts = []
    for prefix, subsets in prefix_groups(layout, h.size):
        key_bits = layout.key_bits(prefix)
        _, order = _sort_pack(prefix_key(h, layout, prefix), key_bits)
        parts.append(sorted_pairs(order, h[order], k, layout, prefix, subsets, workers))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _cross_subset(
    left: np.ndarray, right: np.ndarray, k: int, layout: Layout, subset: tuple[int, ...]
) -> np.ndarray:
    rk = _keys(right, layout, subset)
    r_order = np.argsort(rk, kind="stable")
    rk_sorted = rk[r_order]
    lk = _keys(left, layout, subset)
    lo = np.searchsorted(rk_sorted, lk, side="left")
    hi = np.searchsorted(rk_sorted, lk, side="right")
    counts = hi - lo
    hit = np.flatnonzero(counts)
    if hit.size == 0:
        return np.zeros(0, dtype=np.uint64)
    counts = counts[hit]
    a = np.repeat(hit, counts)
    b = r_order[np.repeat(lo[hit], counts) + _offsets(counts)]
    close = np.bitwise_count(left[a] ^ right[b]) <= k
    return (a[close].astype(np.uint64) << np.uint64(32)) | b[close].astype(np.uint64)


def near_pairs(
    hashes: np.ndarray,
    k: int,
    other: np.ndarray | None = None,
    layout: Layout | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within Hamming distance k: (i, j, distance) as int64 arrays, each pair once.

    Without `other`: pairs i < j inside `hashes`. With `other`: pairs (i into hashes, j into other).
    Hashes are 64-bit integers (signed int64 as stored in the catalog, or uint64).
    """
    h = _as_unsigned(hashes)
    o = None if other is None else _as_unsigned(other)
    if h.size >= 2**32 or (o is not None and o.size >= 2**32):
        raise ValueError("near_pairs handles up to 2^32 - 1 hashes per side")
    empty = (np.zeros(0, dtype=np.int64),) * 3
    if h.size == 0 or (o is not None and o.size == 0) or (o is None and h.size < 2):
        return empty
    layout = layout or plan_layout(k, h.size, None if o is None else o.size)
    if layout.segments <= k or layout.match != layout.segments - k:
        raise ValueError(f"layout {layout} is not exact for k={k}: need match = segments - k >= 1")

    workers = threads or min(2, os.cpu_count() or 1)
    if o is None:
        packed = _self_pairs(h, k, layout, workers)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            packed = np.concatenate(
                list(pool.map(lambda s: _cross_subset(h, o, k, layout, s), layout.subsets))
            )
    packed = np.unique(packed)
    i = (packed >> np.uint64(32)).astype(np.int64)
    j = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    right = h if o is None else o
    dist = np.bitwise_count(h[i] ^ right[j]).astype(np.int64)
    return i, j, dist


def brute_force_pairs(
    hashes: np.ndarray, k: int, other: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-pairs reference (quadratic): for tests and small inputs."""
    h = _as_unsigned(hashes)
    right = h if other is None else _as_unsigned(other)
    d = np.bitwise_count(h[:, None] ^ right[None, :])
    mask = d <= k
    if other is None:
        mask &= np.triu(np.ones_like(mask, dtype=bool), k=1)
    i, j = np.nonzero(mask)
    return i.astype(np.int64), j.astype(np.int64), d[i, j].astype(np.int64)
