"""pHash near-duplicates: exact pairs vs a brute-force popcount, real photos, groups, errors."""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from curation.dedup.phash import (
    MAX_RADIUS,
    choose_method,
    mih_params,
    pack_codes,
    phash_groups,
    phash_pairs,
    phash_pairs_with_distance,
)

COCO = Path(__file__).resolve().parents[2] / "examples" / "data" / "coco25"
# photos whose 2% crop moves their pHash by 2..6 bits (so radius 0 and 8 differ)
PHOTOS = ["000000062554", "000000099053", "000000126107", "000000165518", "000000183709"]
POPCOUNT = np.array([bin(b).count("1") for b in range(256)], np.int64)


def planted(n: int, seed: int) -> np.ndarray:
    """n uint64 hashes over the full range: 60% random, 5% exact copies, 35% copies of an earlier
    hash (possibly itself a copy, so chains form) with 1..6 distinct random bits flipped."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    for i in range(int(0.6 * n), n):
        src = h[rng.integers(0, i)]
        flips = 0 if i < int(0.65 * n) else rng.integers(1, 7)
        bits = rng.choice(64, size=flips, replace=False)
        h[i] = src ^ np.uint64(sum(1 << int(b) for b in bits))
    return h


@functools.cache
def all_distances(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of ``planted(n, seed)`` and its Hamming distance, by byte popcount."""
    h = planted(n, seed)
    i, j = np.triu_indices(n, k=1)
    return i, j, POPCOUNT[(h[i] ^ h[j]).view(np.uint8).reshape(-1, 8)].sum(axis=1)


def brute_force(radius: int) -> tuple[set[tuple[int, int]], dict]:
    i, j, dist = all_distances(0, len(HASHES))
    keep = dist <= radius
    pairs = list(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return set(pairs), dict(zip(pairs, dist[keep].tolist(), strict=True))


HASHES = planted(3000, seed=0)


@pytest.mark.parametrize("method", ["flat", "mih"])
@pytest.mark.parametrize("radius", [0, 4, 8, 10])
def test_pairs_equal_brute_force(radius, method):
    want, want_dist = brute_force(radius)
    assert len(want) > (100 if radius else 50)  # the planted duplicates are there to be found
    for batch in (65536, 700):
        pairs, dist = phash_pairs_with_distance(HASHES, radius=radius, batch=batch, method=method)
        assert pairs.dtype == np.int64 and pairs.shape == (len(want), 2)
        assert dist.dtype == np.int32
        assert (pairs[:, 0] < pairs[:, 1]).all()
        got = list(map(tuple, pairs.tolist()))
        assert got == sorted(got)
        assert set(got) == want
        assert dist.tolist() == [want_dist[p] for p in got]
    assert np.array_equal(phash_pairs(HASHES, radius=radius, method=method), pairs)


@pytest.mark.parametrize("n", [10, 3000, 10**6, 10**8])
@pytest.mark.parametrize("radius", [0, 8, MAX_RADIUS])
def test_mih_params_are_exact_by_pigeonhole(n, radius):
    nhash, b, nflip = mih_params(n, radius)
    assert 8 <= b <= 32 and nhash * b <= 64
    assert nhash * (nflip + 1) > radius  # every pair within radius matches on some substring


def test_auto_picks_mih_only_at_scale_and_small_radius():
    assert choose_method(3000, 8) == "flat" and choose_method(10**6, 8) == "mih"
    assert choose_method(10**5, 0) == "mih" and choose_method(10**6, 16) == "flat"
    default, mih = (phash_pairs(HASHES, radius=8, method=m) for m in ("auto", "mih"))
    assert np.array_equal(default, mih)


def test_packing_is_imagehash_hex_order():
    v = int("f0e1d2c3b4a59687", 16)
    assert bytes(pack_codes(np.array([v], np.uint64))[0]) == bytes.fromhex("f0e1d2c3b4a59687")
    assert not pack_codes(np.array([v], np.uint64))[-1].any()  # padding row for faiss' MIH


def variants(im: Image.Image) -> list[Image.Image]:
    w, h = im.size
    out = []
    for size, quality in (((w, h), 30), ((w * 9 // 10, h * 9 // 10), 90), ((w // 2, h // 2), 30)):
        buf = io.BytesIO()
        im.resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=quality)
        out.append(Image.open(io.BytesIO(buf.getvalue())))
    dx, dy = w // 50, h // 50
    return [*out, im.crop((dx, dy, w - dx, h - dy))]


@pytest.fixture(scope="module")
def photo_hashes() -> tuple[list[imagehash.ImageHash], list[int]]:
    """imagehash pHashes of each photo followed by its 4 variants, and the photo of each."""
    hashes, owner = [], []
    for k, name in enumerate(PHOTOS):
        with Image.open(COCO / f"{name}.jpg") as im:
            rgb = im.convert("RGB")
            for img in [rgb, *variants(rgb)]:
                hashes.append(imagehash.phash(img))
                owner.append(k)
    return hashes, owner


@pytest.mark.parametrize("method", ["flat", "mih"])
def test_real_photos_group_with_their_variants(photo_hashes, method):
    hashes, owner = photo_hashes
    as_int = np.array([int(str(h), 16) for h in hashes], np.uint64)
    assert all(imagehash.hex_to_hash(f"{v:016x}") == h for v, h in zip(as_int, hashes, strict=True))
    pairs, dist = phash_pairs_with_distance(as_int, radius=8, method=method)
    for (i, j), d in zip(pairs.tolist(), dist.tolist(), strict=True):
        assert d == hashes[i] - hashes[j]  # imagehash's own Hamming distance
        assert owner[i] == owner[j]  # different photos are never paired
    groups = phash_groups(as_int, radius=8, method=method)
    originals = np.flatnonzero(np.diff(owner, prepend=-1))
    assert groups.tolist() == [originals[k] for k in owner]
    # the crops move the hash by a few bits: at radius 0 they fall out of their photo's group
    assert len(set(phash_groups(as_int, radius=0).tolist())) > len(PHOTOS)


def union_find_components(n: int, pairs: set[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = find(i), find(j)
        parent[max(a, b)] = min(a, b)  # the root stays the smallest index
    return [find(x) for x in range(n)]


@pytest.mark.parametrize("radius", [0, 4, 8])
def test_groups_are_connected_components_of_pairs(radius):
    want = union_find_components(len(HASHES), brute_force(radius)[0])
    groups = phash_groups(HASHES, radius=radius)
    assert groups.dtype == np.int64 and groups.tolist() == want
    assert len(set(want)) < len(HASHES)
    assert (groups <= np.arange(len(HASHES))).all() and (groups[groups] == groups).all()
    # relabelling the input keeps the partition: the label pairs form a bijection
    perm = np.random.default_rng(1).permutation(len(HASHES))
    back = phash_groups(HASHES[perm], radius=radius)[np.argsort(perm)]
    assert len(set(zip(groups.tolist(), back.tolist(), strict=True))) == len(set(want))
    assert len(set(back.tolist())) == len(set(want))


def test_groups_are_transitive_and_collapse_repeats():
    a = np.uint64(0x8000_0000_0000_0000)
    b, c = a ^ np.uint64(0b1111), a ^ np.uint64(0b1111_1111)  # d(a,b) = d(b,c) = 4, d(a,c) = 8
    far = ~a
    h = np.array([far, c, far, b, a, c], np.uint64)
    assert phash_pairs(h, radius=4).tolist() == [[0, 2], [1, 3], [1, 5], [3, 4], [3, 5]]
    assert phash_groups(h, radius=4).tolist() == [0, 1, 0, 1, 1, 1]
    assert phash_groups(h, radius=3).tolist() == [0, 1, 0, 3, 4, 1]


def test_empty_and_single():
    for h in (np.empty(0, np.uint64), np.array([7], np.uint64)):
        pairs, dist = phash_pairs_with_distance(h, radius=8)
        assert pairs.shape == (0, 2) and pairs.dtype == np.int64 and dist.shape == (0,)
        assert phash_groups(h, radius=8).tolist() == list(range(len(h)))


@pytest.mark.parametrize("radius", [-1, 33, 2.5, True, "8"])
def test_bad_radius_raises(radius):
    with pytest.raises(ValueError, match=rf"radius.*{re.escape(repr(radius))}"):
        phash_pairs(HASHES[:10], radius=radius)
    with pytest.raises(ValueError, match="radius"):
        phash_groups(HASHES[:10], radius=radius)


@pytest.mark.parametrize(
    "hashes, match",
    [
        (HASHES[:10].astype(np.int64), "int64"),
        (HASHES[:10].reshape(2, 5), r"\(2, 5\)"),
        (HASHES[:10].tolist(), "list"),
    ],
)
def test_bad_hashes_raise(hashes, match):
    with pytest.raises(ValueError, match=match):
        phash_pairs(hashes, radius=4)


def test_bad_method_and_batch_raise():
    with pytest.raises(ValueError, match="'lsh'"):
        phash_pairs(HASHES[:10], radius=4, method="lsh")
    with pytest.raises(ValueError, match=r"batch.*0"):
        phash_pairs(HASHES[:10], radius=4, batch=0)
