"""The sparse feature matrix: stored top-k (feature_ids, values) lists -> a CSR matrix.

Import-light (numpy, pyarrow, scipy): the clustering, probe and export paths read features through
it without loading torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from core.errors import StudioError


def dense_from_sparse(ids_lists: Any, values_lists: Any, d_sae: int) -> sp.csr_matrix:
    """Rows of (feature_ids, values) lists -> a CSR matrix [n, d_sae] for clustering and probes.

    Accepts Arrow list arrays/columns (no Python loop) or sequences of sequences.
    """
    if isinstance(ids_lists, pa.ChunkedArray):
        ids_lists = ids_lists.combine_chunks()
    if isinstance(values_lists, pa.ChunkedArray):
        values_lists = values_lists.combine_chunks()
    if isinstance(ids_lists, pa.ListArray | pa.LargeListArray) and isinstance(
        values_lists, pa.ListArray | pa.LargeListArray
    ):
        first = ids_lists.offsets[0].as_py()
        indptr = ids_lists.offsets.to_numpy().astype(np.int64) - first
        indices = ids_lists.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
        data = values_lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        n = len(ids_lists)
    else:
        lens = np.fromiter((len(row) for row in ids_lists), dtype=np.int64)
        n = len(lens)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        total = int(indptr[-1])
        indices = np.fromiter((i for row in ids_lists for i in row), dtype=np.int32, count=total)
        data = np.fromiter((v for row in values_lists for v in row), dtype=np.float32, count=total)
    if len(indices) != len(data):
        raise StudioError(f"{len(indices)} feature ids but {len(data)} values")
    if len(indices) and (indices.min() < 0 or indices.max() >= d_sae):
        raise StudioError(f"feature ids must lie in 0..{d_sae - 1}")
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n, d_sae))
    matrix.sort_indices()
    return matrix
