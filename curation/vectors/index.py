"""faiss indexes over L2-normalised embeddings: choose, build (seeded), search, save, cache.

Cosine similarity of unit vectors is their inner product, so the default metric is ``ip``
and ``search`` returns similarities (higher = closer). Index sizes by ``choose_index_spec``:

* ``n < FLAT_MAX_N`` (100k): ``"Flat"`` — exact; 100k x 512 float32 is 200 MB and a query
  batch is one matrix product.
* ``n < IVF_FLAT_MAX_N`` (4M): ``"IVF{nlist},Flat"`` with ``nlist = choose_nlist(n)`` (4*sqrt(n)
  rounded to a power of two, at most 65536); vectors stay exact, only the probing is approximate.
* beyond: ``"IVF{nlist},PQ{m}np,RFlat"`` — PQ codes (``m`` bytes per vector, <= 64 so GPU
  IVFPQ can hold them; ``np`` = no polysemous training, which takes minutes and is only used by
  polysemous search) shortlist ``K_FACTOR * k`` candidates that a flat float32 copy re-ranks
  exactly (``IndexRefineFlat``); the refine copy costs n*d*4 bytes of RAM.

Training uses a seeded subset of at most 64*nlist vectors and ``cp.seed = seed``, so the same
vectors and seed give the same index. faiss is an optional dependency (``zfoundry[cpu]`` or
``zfoundry[gpu]``); GPU is used only where faiss was built with it and sees a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

FLAT_MAX_N = 100_000
IVF_FLAT_MAX_N = 4_000_000
MAX_NLIST = 65_536
TRAIN_POINTS_PER_LIST = 64  # faiss warns below 39; more costs k-means time, not recall
MIN_NPROBE, MAX_NPROBE = 16, 256
K_FACTOR = 4
NORM_TOL = 1e-2
CACHE_FORMAT = "zfoundry.vector_index/1"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss is installed with either extra
        raise ImportError("curation.vectors needs faiss: install zfoundry[cpu] or [gpu]") from e
    return faiss


# ---------------------------------------------------------------- specs


def choose_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: 4*sqrt(n) rounded to a power of two, in [1, 65536]."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n!r}")
    return int(min(MAX_NLIST, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))))


def _pq_m(dim: int) -> int:
    """PQ bytes per vector: the largest of 64, 48, 32, ... that divides dim with >= 4 dims each."""
    for m in (64, 48, 32, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


def choose_index_spec(n: int, dim: int) -> str:
    """A faiss ``index_factory`` string for ``n`` unit vectors of ``dim`` (module docstring)."""
    if dim < 1:
        raise ValueError(f"dim: must be >= 1, got {dim!r}")
    if n < FLAT_MAX_N:
        return "Flat"
    nlist = choose_nlist(n)
    if n < IVF_FLAT_MAX_N:
        return f"IVF{nlist},Flat"
    return f"IVF{nlist},PQ{_pq_m(dim)}np,RFlat"


INDEX_SPECS: dict[str, Callable[[int, int], str]] = {
    "auto": choose_index_spec,
    "flat": lambda n, dim: "Flat",
    "ivf": lambda n, dim: f"IVF{choose_nlist(n)},Flat",
    "ivfpq": lambda n, dim: f"IVF{choose_nlist(n)},PQ{_pq_m(dim)}np,RFlat",
}
METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}


def get_index_spec(name_or_spec: str, n: int, dim: int) -> str:
    """A registry name (``auto``, ``flat``, ``ivf``, ``ivfpq``) resolved for (n, dim), or an
    explicit faiss factory string, checked by constructing it, passed through unchanged."""
    if name_or_spec in INDEX_SPECS:
        return INDEX_SPECS[name_or_spec](n, dim)
    try:
        _faiss().index_factory(dim, name_or_spec)
    except Exception as e:
        raise ValueError(
            f"spec: not one of {sorted(INDEX_SPECS)} nor a faiss factory string for "
            f"dim={dim}, got {name_or_spec!r} ({e})"
        ) from e
    return name_or_spec


def get_metric(name: str) -> int:
    if name not in METRICS:
        raise ValueError(f"metric: must be one of {sorted(METRICS)}, got {name!r}")
    return getattr(_faiss(), METRICS[name])


# ---------------------------------------------------------------- inputs


def as_matrix(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 (rows, dim) matrix of finite values, or ValueError."""
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(rows, {dim})" if dim is not None else "(rows, dim)"
        raise ValueError(f"{what}: must have shape {want}, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: must be float16/float32, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{what}: {bad} of {len(x)} rows hold NaN/inf")
    return x


def check_unit(x: np.ndarray, what: str, tol: float = NORM_TOL) -> None:
    """Raise ValueError naming how many rows of ``x`` have |norm - 1| > tol."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    off = np.flatnonzero(np.abs(norms - 1.0) > tol)
    if off.size:
        i = int(off[0])
        raise ValueError(
            f"{what}: {off.size} of {len(x)} rows are not L2-normalised (|norm - 1| > {tol}); "
            f"first is row {i} with norm {norms[i]:.4f}"
        )


# ---------------------------------------------------------------- build / search


def _use_gpu(use_gpu: bool | None) -> bool:
    faiss = _faiss()
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and ngpu == 0:
        raise RuntimeError(
            f"use_gpu=True but faiss {faiss.__version__} sees no GPU (CPU-only build?): "
            "install zfoundry[gpu] on a GPU machine or pass use_gpu=None"
        )
    return ngpu > 0 if use_gpu is None else bool(use_gpu)


def _ivf(index: faiss.Index) -> Any | None:
    try:
        return _faiss().extract_index_ivf(index)
    except RuntimeError:
        return None


def _is_refine(index: faiss.Index) -> bool:
    return isinstance(_faiss().downcast_index(index), _faiss().IndexRefine)


def is_gpu_index(index: faiss.Index) -> bool:
    """Whether ``index`` (or the first replica/shard) lives on a GPU."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexReplicas | faiss.IndexShards):
        return index.count() > 0 and is_gpu_index(index.at(0))
    return type(index).__name__.startswith("Gpu")


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set IVF ``nprobe`` on a CPU or GPU index (no-op for indexes without IVF)."""
    faiss = _faiss()
    if is_gpu_index(index):
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    elif _ivf(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)


def _to_gpu(index: faiss.Index) -> faiss.Index:
    faiss = _faiss()
    if _is_refine(index):  # faiss cannot clone IndexRefine to GPU: stays on CPU
        log.info("refine index stays on CPU (faiss has no GPU IndexRefine)")
        return index
    ivf = _ivf(index)
    co = faiss.GpuMultipleClonerOptions()
    co.useFloat16 = ivf is not None and "PQ" in type(faiss.downcast_index(ivf)).__name__
    gpu = faiss.index_cpu_to_all_gpus(index, co=co)
    if ivf is not None:
        set_nprobe(gpu, ivf.nprobe)
    return gpu


def default_nprobe(nlist: int) -> int:
    """nlist/8 clamped to [16, 256] (and to nlist): ~12% of lists for small IVFs, 256 above."""
    return min(nlist, max(MIN_NPROBE, min(MAX_NPROBE, nlist // 8)))


def build_index(
    vectors: np.ndarray,
    *,
    spec: str | None = None,
    metric: str = "ip",
    seed: int = 0,
    use_gpu: bool | None = None,
    nprobe: int | None = None,
) -> faiss.Index:
    """A searchable faiss index over the (n, d) unit ``vectors`` (row i gets id i).

    ``spec``: registry name or factory string (None = ``auto``). ``use_gpu=None`` uses the GPU(s)
    when faiss has them; the returned index then lives on GPU (``save_index`` moves it back).
    """
    faiss = _faiss()
    if nprobe is not None and (not isinstance(nprobe, int) or nprobe < 1):
        raise ValueError(f"nprobe: must be an integer >= 1 or None, got {nprobe!r}")
    x = as_matrix(vectors, "vectors")
    check_unit(x, "vectors")
    n, d = x.shape
    if n == 0:
        raise ValueError("vectors: must hold at least one row, got shape (0, d)")
    factory = get_index_spec(spec or "auto", n, d)
    gpu = _use_gpu(use_gpu)
    index = faiss.index_factory(d, factory, get_metric(metric))
    ivf = _ivf(index)
    if not index.is_trained:
        _train(index, ivf, x, seed, gpu)
    if ivf is not None:
        set_nprobe(index, nprobe or default_nprobe(ivf.nlist))
    if _is_refine(index):
        faiss.downcast_index(index).k_factor = K_FACTOR
    if gpu:
        index = _to_gpu(index)
    index.add(x)
    return index


def _train(index: faiss.Index, ivf: Any | None, x: np.ndarray, seed: int, gpu: bool) -> None:
    faiss = _faiss()
    n = len(x)
    limit = TRAIN_POINTS_PER_LIST * max(ivf.nlist if ivf is not None else 1, 256)
    if ivf is not None:
        if n < ivf.nlist:
            raise ValueError(f"vectors: IVF with nlist={ivf.nlist} needs >= nlist rows, got {n}")
        ivf.cp.seed = seed
    for sub in (index, ivf):  # PQ codebooks have their own k-means
        sub = faiss.downcast_index(sub) if sub is not None else None
        if sub is not None and hasattr(sub, "pq"):
            sub.pq.cp.seed = seed
    rows = np.random.default_rng(seed).choice(n, size=limit, replace=False) if n > limit else None
    sample = x if rows is None else x[np.sort(rows)]
    clus = None
    if gpu and ivf is not None:  # coarse k-means assignment on GPU, training stays seeded
        clus = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(index.d, index.metric_type))
        ivf.clustering_index = clus
    try:
        index.train(sample)
    finally:
        if clus is not None:
            ivf.clustering_index = None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, batch_size: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """(sims (q, k) float32, ids (q, k) int64) of each query's k nearest, best first.

    Missing neighbours (k > ntotal, or too few in the probed lists) have id -1 and sim -inf
    (+inf distance for an ``l2`` index). Queries are sent to faiss ``batch_size`` at a time.
    """
    q = as_matrix(queries, "queries", dim=index.d)
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k: must be an integer >= 1, got {k!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size!r}")
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), batch_size):
        sims[s : s + batch_size], ids[s : s + batch_size] = index.search(q[s : s + batch_size], k)
    missing = -np.inf if index.metric_type == _faiss().METRIC_INNER_PRODUCT else np.inf
    sims[ids < 0] = missing
    return sims, ids


# ---------------------------------------------------------------- persistence


def _replace_atomic(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` (moved to CPU first if on GPU) to ``path`` atomically."""
    faiss = _faiss()
    cpu = faiss.index_gpu_to_cpu(index) if is_gpu_index(index) else index
    _replace_atomic(Path(path), lambda tmp: faiss.write_index(cpu, tmp))


def load_index(path: str | os.PathLike, *, use_gpu: bool | None = None) -> faiss.Index:
    """Read an index written by ``save_index``; ``use_gpu`` as in ``build_index``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: no faiss index at {str(path)!r}")
    index = _faiss().read_index(str(path))
    return _to_gpu(index) if _use_gpu(use_gpu) else index


class IndexCache:
    """``<dir>/index.faiss`` + ``<dir>/index.json``, rebuilt only when the inputs change.

    The key is (fingerprint, model, requested spec, metric, seed); the fingerprint is the
    caller's (e.g. a hash of the vectors table's shard hashes). Writes are atomic and
    index.json is removed before and written after the index, so a crash never pairs a new
    index with an old key. One builder per directory at a time.
    """

    def __init__(self, directory: str | os.PathLike, *, use_gpu: bool | None = None) -> None:
        self.dir = Path(directory)
        self.index_path = self.dir / "index.faiss"
        self.meta_path = self.dir / "index.json"
        self.use_gpu = use_gpu

    def meta(self) -> dict[str, Any] | None:
        """index.json's contents, or None when absent or unreadable."""
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def get_or_build(
        self,
        vectors_loader: Callable[[], np.ndarray],
        fingerprint: str,
        model: str,
        spec: str | None = None,
        *,
        metric: str = "ip",
        seed: int = 0,
    ) -> faiss.Index:
        requested = spec or "auto"
        key = dict(fingerprint=fingerprint, model=model, requested_spec=requested, metric=metric)
        key["seed"] = seed
        meta = self.meta()
        if meta is not None and all(meta.get(f) == v for f, v in key.items()):
            try:
                return load_index(self.index_path, use_gpu=self.use_gpu)
            except (OSError, RuntimeError) as e:  # missing or unreadable: rebuild
                log.warning("rebuilding %s: %s", self.index_path, e)
        vectors = vectors_loader()
        index = build_index(vectors, spec=spec, metric=metric, seed=seed, use_gpu=self.use_gpu)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta_path.unlink(missing_ok=True)
        save_index(index, self.index_path)
        ivf = _ivf(index) if not is_gpu_index(index) else None
        meta = {
            "format": CACHE_FORMAT,
            **key,
            "spec": get_index_spec(spec or "auto", len(vectors), index.d),
            "n": int(index.ntotal),
            "dim": int(index.d),
            "nprobe": int(ivf.nprobe) if ivf is not None else None,
            "faiss_version": _faiss().__version__,
        }
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        _replace_atomic(self.meta_path, lambda tmp: Path(tmp).write_text(text))
        return index
