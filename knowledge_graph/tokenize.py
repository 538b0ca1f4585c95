"""Caption and tag tokenising: strings -> ``Corpus`` (CSR of int32 term ids), the input of
``knowledge_graph.weights``.

``tokenize`` splits captions on whitespace (Python's ``str.split``), strips ``PUNCTUATION``
from both ends of each word and lower-cases it; ``encode_tags`` takes list<string> tags as
given. Both intern words in one numba pass per chunk over the Arrow string bytes (no Python
object per token) on a thread pool, and number the vocabulary in first-seen order.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PUNCTUATION = ".,;:!?\"'()[]{}<>*`~-_/\\|"
"""Stripped from both ends of each word (inner ones stay: "don't", "t-shirt")."""
CHUNK_ROWS = 1_000_000
"""Rows per tokenising chunk at most (fewer when that leaves a thread without two chunks)."""


@dataclass(frozen=True)
class Corpus:
    """Documents as CSR: terms of document i are ``tokens[indptr[i]:indptr[i + 1]]``."""

    indptr: np.ndarray
    tokens: np.ndarray
    vocab: pa.Array

    @property
    def n_docs(self) -> int:
        return len(self.indptr) - 1


# ---------------------------------------------------------------- tokenising
#
# One numba pass per chunk of rows over the Arrow string bytes: split on ASCII whitespace,
# strip PUNCTUATION from both ends and lower-case ASCII words, and intern the cleaned bytes in
# an open-addressing table (64-bit hash, bytes compared on a hash match), so each token
# becomes a chunk-local id. Words with non-ASCII bytes are interned raw and cleaned in Python
# (``str.split`` + ``clean_word``) once per distinct word. The chunk tables are then merged
# into one vocabulary in chunk order (vocabulary order = first occurrence) and the local ids
# mapped to global ones. Chunks run on a thread pool (the kernels release the GIL).

_WS, _PUNCT, _HIGH = 1, 2, 4  # byte classes; whitespace = Python's ASCII str.isspace()
_CLASS = np.zeros(256, np.uint8)
_CLASS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = _WS
_CLASS[list(PUNCTUATION.encode())] = _PUNCT
_CLASS[128:] = _HIGH
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[65:91] += 32


_U = np.uint64
_LONG = _U(0xFF) << _U(56)  # top byte of a long key's code (short codes: the length, 1-7)


@numba.njit(nogil=True, cache=True, inline="always")
def _code(src, s, e, lower):
    """A key's 64-bit code: keys of < 8 bytes packed exactly (big-endian, the length in the
    top byte), longer ones an FNV-1a hash with the top byte 0xFF (bytes compared on a match)."""
    if e - s < 8:
        c = _U(0)
        for j in range(s, e):
            c = (c << _U(8)) | _U(_LOWER[src[j]] if lower else src[j])
        return c | (_U(e - s) << _U(56))
    h = _U(14695981039346656037)
    for j in range(s, e):
        h = (h ^ _U(_LOWER[src[j]] if lower else src[j])) * _U(1099511628211)
    return h | _LONG


@numba.njit(nogil=True, cache=True, inline="always")
def _slot(code, mask):
    """murmur3's 64-bit finaliser: the code's home slot."""
    h = code ^ (code >> _U(33))
    h *= _U(0xFF51AFD7ED558CCD)
    h ^= h >> _U(33)
    h *= _U(0xC4CEB9FE1A85EC53)
    return (h ^ (h >> _U(33))) & mask


@numba.njit(nogil=True, cache=True, inline="always")
def _find(slots, koff, arena, code, src, s, e, lower):
    """(slot, id) of the key ``src[s:e]`` (lower-cased when ``lower``) with code ``code``;
    id -1 and the empty slot where it goes when it is not in the table. ``slots`` holds
    (code, id) pairs; code 0 = empty."""
    mask = _U(len(slots) // 2 - 1)
    i = _slot(code, mask)
    while True:
        c = slots[2 * i]
        if c == 0:
            return i, -1
        if c == code:
            k = np.int64(slots[2 * i + 1])
            if code < _LONG:
                return i, k
            a, length = koff[k], koff[k + 1] - koff[k]
            if length == e - s:
                j = 0
                while j < length and arena[a + j] == (_LOWER[src[s + j]] if lower else src[s + j]):
                    j += 1
                if j == length:
                    return i, k
        i = (i + _U(1)) & mask


@numba.njit(nogil=True, cache=True, inline="always")
def _put(slots, koff, arena, n, i, code, src, s, e, lower):
    """Stores ``src[s:e]`` as key n at (empty) slot i; the caller has reserved room."""
    a = koff[n]
    for j in range(e - s):
        arena[a + j] = _LOWER[src[s + j]] if lower else src[s + j]
    koff[n + 1] = a + e - s
    slots[2 * i], slots[2 * i + 1] = code, n


@numba.njit(nogil=True, cache=True)
def _reserve(slots, koff, arena, n, keys, size):
    """The table with room for ``keys`` more keys of ``size`` bytes in all (grown by doubling,
    the slots rehashed; load factor <= 1/2). Growing happens out of the hot loops: numba
    reference-counts arrays reassigned in a loop, which costs more than the lookups."""
    cap = len(slots) // 2
    while 2 * (n + keys) > cap:
        cap *= 2
    if cap > len(slots) // 2:
        new, mask = np.zeros(2 * cap, np.uint64), _U(cap - 1)
        for old in range(0, len(slots), 2):
            if slots[old]:
                j = _slot(slots[old], mask)
                while new[2 * j]:
                    j = (j + _U(1)) & mask
                new[2 * j], new[2 * j + 1] = slots[old], slots[old + 1]
        slots = new
    return slots, _fit(koff, n + keys + 2, n + 1), _fit(arena, koff[n] + size, koff[n])


@numba.njit(nogil=True, cache=True)
def _fit(a, size, used):
    """``a`` (its first ``used`` items kept) with room for ``size`` items."""
    if size <= len(a):
        return a
    out = np.zeros(max(size, 2 * len(a)), a.dtype)
    out[:used] = a[:used]
    return out


@numba.njit(nogil=True, cache=True)
def _new_table():
    """An empty table: ((code, id) slot pairs, key offsets into the arena, arena)."""
    return np.zeros(1 << 13, np.uint64), np.zeros(1 << 12, np.int64), np.empty(1 << 16, np.uint8)


@numba.njit(nogil=True, cache=True)
def _scan(data, offsets, valid, split):
    """Rows ``data[offsets[r]:offsets[r + 1]]`` -> (tokens per row, chunk-local id per token,
    keys as ``koff`` / ``arena``, raw flag per key). ``split``: words cleaned as above, raw =
    non-ASCII (left to Python); else each non-empty row is one key, as given."""
    rows = len(offsets) - 1
    slots, koff, arena = _new_table()
    raw = np.zeros(len(koff), np.bool_)
    tokens = np.empty(max(16, (offsets[rows] - offsets[0]) // 4), np.int32)
    counts = np.zeros(rows, np.int64)
    state = np.zeros(3, np.int64)  # next row, keys, tokens
    while state[0] < rows:
        r, n, ntok = state
        size = offsets[r + 1] - offsets[r]
        most = _most_words(size, split)
        slots, koff, arena = _reserve(slots, koff, arena, n, most, size)
        raw, tokens = _fit(raw, len(koff), n), _fit(tokens, ntok + most, ntok)
        _scan_rows(data, offsets, valid, split, state, slots, koff, arena, raw, tokens, counts)
    n, ntok = state[1], state[2]
    return counts, tokens[:ntok], koff[: n + 1].copy(), arena[: koff[n]].copy(), raw[:n]


@numba.njit(nogil=True, cache=True, inline="always")
def _most_words(size, split):
    """At most this many words (new keys, tokens) in a row of ``size`` bytes."""
    return (size + 1) // 2 if split else min(size, 1)


@numba.njit(nogil=True, cache=True)
def _scan_rows(data, offsets, valid, split, state, slots, koff, arena, raw, tokens, counts):
    """``_scan``'s loop, from row ``state[0]`` on while the arrays surely have room for the
    next row (no reallocation here: see ``_reserve``); ``state`` is updated."""
    r, n, ntok = state
    while r < len(offsets) - 1:
        i, stop = offsets[r], offsets[r + 1]
        room = min(len(slots) // 4 - n, len(koff) - n - 2, len(raw) - n, len(tokens) - ntok)
        if _most_words(stop - i, split) > room or koff[n] + stop - i > len(arena):
            break
        if len(valid) and not valid[r]:
            i = stop
        c = 0
        while i < stop:
            if not split:  # the whole row is the key, as given
                s, e, i = i, stop, stop
                code = _code(data, s, e, False)
                high = lower = False
            else:  # one pass over a word: its end, any non-ASCII / upper-case byte, its code
                ch = data[i]
                if ch <= 32 and _CLASS[ch] == _WS:
                    i += 1
                    continue
                s, bits, packed, upper = i, 0, _U(0), False
                while True:
                    bits |= ch
                    packed = (packed << _U(8)) | _U(ch)
                    upper |= np.uint8(ch - 65) < 26
                    i += 1
                    if i == stop:
                        break
                    ch = data[i]
                    if ch <= 32 and _CLASS[ch] == _WS:
                        break
                e, high = i, bits >= 128
                lower = not high
                if lower and (_CLASS[data[s]] == _PUNCT or _CLASS[data[e - 1]] == _PUNCT):
                    while s < e and _CLASS[data[s]] == _PUNCT:
                        s += 1
                    while e > s and _CLASS[data[e - 1]] == _PUNCT:
                        e -= 1
                    if s == e:
                        continue
                    upper = True  # recompute the code
                if upper or high or e - s >= 8:
                    code = _code(data, s, e, lower)
                else:
                    code = packed | (_U(e - s) << _U(56))
            slot, k = _find(slots, koff, arena, code, data, s, e, lower)
            if k < 0:
                _put(slots, koff, arena, n, slot, code, data, s, e, lower)
                raw[n] = high
                k, n = n, n + 1
            tokens[ntok] = k
            ntok += 1
            c += 1
        counts[r] = c
        r += 1
    state[0], state[1], state[2] = r, n, ntok


@numba.njit(nogil=True, cache=True)
def _merge(slots, koff, arena, n, lkoff, larena, lraw, xoff, xkoff, xarena):
    """Interns a chunk's keys into the global table in local-id order; the r-th raw key stands
    for its cleaned words, keys ``xoff[r]:xoff[r + 1]`` of ``xkoff`` / ``xarena``. Returns the
    table and the map local id k -> global ids ``ids[moff[k]:moff[k + 1]]``."""
    nloc = len(lkoff) - 1
    size = len(larena) + len(xarena)
    slots, koff, arena = _reserve(slots, koff, arena, n, nloc + len(xkoff), size)
    moff = np.zeros(nloc + 1, np.int64)
    ids = np.empty(nloc + len(xkoff), np.int32)
    n = _merge_keys(slots, koff, arena, n, lkoff, larena, lraw, xoff, xkoff, xarena, moff, ids)
    return slots, koff, arena, n, moff, ids[: moff[nloc]]


@numba.njit(nogil=True, cache=True)
def _merge_keys(slots, koff, arena, n, lkoff, larena, lraw, xoff, xkoff, xarena, moff, ids):
    """``_merge``'s loop (room reserved); returns the new number of keys."""
    m = r = 0
    for k in range(len(lkoff) - 1):
        if lraw[k]:
            src, so, lo, hi = xarena, xkoff, xoff[r], xoff[r + 1]
            r += 1
        else:
            src, so, lo, hi = larena, lkoff, k, k + 1
        for x in range(lo, hi):
            s, e = so[x], so[x + 1]
            code = _code(src, s, e, False)
            slot, g = _find(slots, koff, arena, code, src, s, e, False)
            if g < 0:
                _put(slots, koff, arena, n, slot, code, src, s, e, False)
                g, n = n, n + 1
            ids[m] = g
            m += 1
        moff[k + 1] = m
    return n


@numba.njit(nogil=True, cache=True)
def _remap(local, counts, moff, ids, out, out_counts):
    """Local ids -> global ids in ``out`` (and tokens per row in ``out_counts``)."""
    t = j = 0
    for r in range(len(counts)):
        c = 0
        for _ in range(counts[r]):
            k = local[t]
            t += 1
            for x in range(moff[k], moff[k + 1]):
                out[j] = ids[x]
                j += 1
                c += 1
        out_counts[r] = c


def clean_word(word: str) -> str:
    """Lower-cased, punctuation stripped from both ends (per distinct word, not per token)."""
    return word.lower().strip(PUNCTUATION)


def _clean_raw(lkoff: np.ndarray, larena: np.ndarray, raw: np.ndarray):
    """The words of each raw (non-ASCII) key, split and cleaned in Python once per distinct
    key: (word range per raw key, word offsets, word bytes), as ``_merge`` takes them."""
    buf = larena.tobytes() if raw.any() else b""
    words = [
        [w for w in map(clean_word, buf[lkoff[k] : lkoff[k + 1]].decode().split()) if w]
        for k in np.flatnonzero(raw)
    ]
    enc = [w.encode() for ws in words for w in ws]
    xoff = np.zeros(len(words) + 1, np.int64)
    xoff[1:] = np.cumsum([len(ws) for ws in words])
    xkoff = np.zeros(len(enc) + 1, np.int64)
    xkoff[1:] = np.cumsum([len(b) for b in enc])
    return xoff, xkoff, np.frombuffer(b"".join(enc), np.uint8)


def _strings(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, int64 offsets, validity or empty) of a string array, zero-copy for the bytes."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    width = 4 if pa.types.is_string(arr.type) else 8
    offsets = np.zeros(1, np.int64)
    if len(arr):
        dtype = np.int32 if width == 4 else np.int64
        offsets = np.frombuffer(off_buf, dtype, len(arr) + 1, arr.offset * width)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    valid = np.zeros(0, np.bool_)
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return data, offsets.astype(np.int64), valid


def _scan_chunk(arr: pa.Array, split: bool):
    """``_scan`` of a chunk of captions (``split``) or of list<string> tags."""
    if split:
        return _scan(*_strings(arr), True)
    # list<string>: each tag one key; per-tag counts (0 or 1) summed per list
    arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
    ends = np.zeros(len(arr) + 1, np.int64)
    ends[1:] = np.cumsum(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
    counts, *rest = _scan(*_strings(pc.list_flatten(arr)), False)
    done = np.concatenate([[0], np.cumsum(counts)])
    return (done[ends[1:]] - done[ends[:-1]], *rest)


def tokenize(texts: pa.Array | pa.ChunkedArray | Sequence[str], *, threads: int = 2) -> Corpus:
    """Caption words -> ``Corpus``: each caption split on whitespace (as ``str.split``), each
    word lower-cased and stripped of end punctuation (``clean_word``); words that clean to
    nothing are dropped. A numba pass over the Arrow bytes per chunk of rows on ``threads``
    threads (above); vocabulary in order of first occurrence."""
    return _corpus(texts, True, threads)


def encode_tags(tags: pa.Array | pa.ChunkedArray, *, threads: int = 2) -> Corpus:
    """A list<string> column of tags (one list per sample) -> ``Corpus`` over distinct tags
    (tags are used as given; empty and null ones dropped)."""
    return _corpus(tags, False, threads)


def _corpus(data, split: bool, threads: int) -> Corpus:
    """Chunks scanned on the pool; their tables merged here in order; tokens remapped."""
    if not isinstance(data, pa.Array | pa.ChunkedArray):
        data = pa.array(data)
    arrays = data.chunks if isinstance(data, pa.ChunkedArray) else [data]
    step = max(1, min(CHUNK_ROWS, -(-len(data) // (2 * max(1, threads)))))
    chunks = [a.slice(s, step) for a in arrays for s in range(0, len(a), step)]
    table, n, parts = _new_table(), 0, []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for counts, local, lkoff, larena, raw in pool.map(
            partial(_scan_chunk, split=split), chunks
        ):
            x = _clean_raw(lkoff, larena, raw)
            *table, n, moff, ids = _merge(*table, n, lkoff, larena, raw, *x)
            size = int(np.diff(moff)[local].sum()) if raw.any() else len(local)
            parts.append((counts, local, moff, ids, size))
        starts = np.cumsum([0] + [p[-1] for p in parts])
        tokens = np.empty(starts[-1], np.int32)

        def remap(i: int) -> np.ndarray:
            counts, local, moff, ids, _ = parts[i]
            out_counts = np.empty_like(counts)
            _remap(local, counts, moff, ids, tokens[starts[i] : starts[i + 1]], out_counts)
            return out_counts

        lengths = list(pool.map(remap, range(len(parts))))
    indptr = np.zeros(len(data) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else [], out=indptr[1:])
    koff, arena = table[1][: n + 1], table[2][: table[1][n]]
    vocab = pa.LargeStringArray.from_buffers(n, pa.py_buffer(koff), pa.py_buffer(arena))
    return Corpus(indptr, tokens, vocab.cast(pa.string()))
