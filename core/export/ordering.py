"""The written order (SAERL's curriculum, global easy-to-hard, random, as ingested) as indices
into the kept rows; the export step then cuts it into batches (core.export.batching)."""

from __future__ import annotations

import numpy as np

from core.errors import StudioError
from core.export.options import Order


def order_index(
    n: int,
    *,
    order: Order,
    seed: int = 0,
    cluster: np.ndarray | None = None,
    difficulty: np.ndarray | None = None,
    higher_is: str = "harder",
) -> np.ndarray:
    """The written order as indices into rows given in ingest order.

    - none: as ingested. random: a seeded permutation.
    - easy-to-hard: the whole set sorted by ``difficulty`` (easiest first).
    - curriculum (SAERL): easy-to-hard within each cluster, clusters interleaved by progress (row
      i of a cluster of size s sorts at i/s), so a sequential reader sees the easy part of every
      cluster before the hard part of any.

    ``higher_is`` says what a larger difficulty value means ("harder", or "easier" for a pass
    rate). Rows with no difficulty go last; ties keep ingest order.

        >>> order_index(4, order="easy-to-hard", difficulty=np.array([0.9, 0.1, 0.5, 0.2]),
        ...             higher_is="easier").tolist()
        [0, 2, 3, 1]
    """
    rows = np.arange(n)
    if order == "none" or n == 0:
        return rows
    if order == "random":
        return np.random.default_rng(seed).permutation(n)
    if difficulty is None:
        raise StudioError(f"--order {order} needs a difficulty column")
    d = np.asarray(difficulty, dtype=np.float64)
    hardness = -d if higher_is == "easier" else d
    hardness = np.where(np.isnan(hardness), np.inf, hardness)
    if order == "easy-to-hard":
        return np.lexsort((rows, hardness))
    c = np.zeros(n) if cluster is None else np.asarray(cluster, dtype=np.float64)
    c = np.where(np.isnan(c), -1, c)
    by_cluster = np.lexsort((rows, hardness, c))
    # position of each row inside its cluster, as a share of the cluster's size
    sorted_cluster = c[by_cluster]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cluster)) + 1]
    sizes = np.diff(np.r_[starts, n])
    pos = rows - np.repeat(starts, sizes)
    progress = pos / np.repeat(sizes, sizes)
    return by_cluster[np.lexsort((sorted_cluster, progress))]
