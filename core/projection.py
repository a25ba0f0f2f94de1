"""2-D projection of SAE feature vectors with UMAP (cosine on the sparse vectors).

umap-learn compiles with numba on first use in every process (about 35 s on 2 cores), so this
runs in the pipeline, never in the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.preprocessing import normalize

from core.errors import StudioError


@dataclass(frozen=True)
class ProjectConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise StudioError(f"n_neighbors must be at least 2, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise StudioError(f"min_dist must be in [0, 1], got {self.min_dist}")


def umap_2d(X: sparse.csr_matrix, cfg: ProjectConfig) -> np.ndarray:
    """[n, d_sae] sparse -> [n, 2] float32. Seeded, so the same input gives the same map."""
    import umap  # slow import (numba); only the project step pays for it

    n = len(X.indptr) - 1
    if n < 4:
        raise StudioError(f"UMAP needs at least 4 examples, got {n}")
    Xn = normalize(X.astype(np.float32), norm="l2", axis=1)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(cfg.n_neighbors, n - 1),
        min_dist=cfg.min_dist,
        metric=cfg.metric,
        random_state=cfg.seed,
        # spectral init needs a connected graph; random init never fails on tiny data
        init="spectral" if n > 50 else "random",
    )
    xy = reducer.fit_transform(Xn)
    return np.asarray(xy, dtype=np.float32)
