"""core.sae: loading and checking SAEs, and training one with sae-lens's trainer."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.errors import StudioError
from core.sae import (
    TRAINING_INFO_FILENAME,
    check_sae_matches,
    load_sae,
    sae_info,
    train_sae,
)


def sparse_data(n: int = 3000, d_in: int = 32, n_true: int = 64, seed: int = 0) -> torch.Tensor:
    """Activations made of a few dictionary directions each, with an offset: SAE-learnable."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_true, d_in, generator=gen)
    codes = torch.rand(n, n_true, generator=gen) * (torch.rand(n, n_true, generator=gen) < 0.05)
    return codes @ dictionary + 3.0 + 0.01 * torch.randn(n, d_in, generator=gen)


def test_load_sae_and_info(tiny_sae_dir: Path) -> None:
    from sae_lens import TopKSAE

    sae = load_sae(path=tiny_sae_dir)
    assert isinstance(sae, TopKSAE)
    info = sae_info(sae)
    assert (info["d_in"], info["d_sae"], info["architecture"], info["k"]) == (64, 256, "topk", 8)
    assert info["hook_name"] is None


def test_load_sae_missing_or_bad_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-sae"
    with pytest.raises(StudioError, match=f"SAE folder '{missing}' does not exist"):
        load_sae(path=missing)
    with pytest.raises(StudioError, match=r"has no cfg\.json"):
        load_sae(path=tmp_path)
    with pytest.raises(StudioError, match="either an SAE folder"):
        load_sae()


def test_load_sae_from_hub_offline_is_a_studio_error() -> None:
    with pytest.raises(StudioError, match="could not be loaded from the Hugging Face hub"):
        load_sae(release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")


def test_check_sae_d_in_mismatch(tiny_bert: Any, make_sae: Callable[..., Any]) -> None:
    sae = make_sae(d_in=32)
    with pytest.raises(StudioError, match=r"SAE d_in 32 does not match model '.*' hidden size 64"):
        check_sae_matches(sae, tiny_bert, layer=1)


def test_check_sae_hook_layer(tiny_bert: Any, make_sae: Callable[..., Any]) -> None:
    sae = make_sae()
    check_sae_matches(sae, tiny_bert, layer=1)  # no hook recorded: nothing to compare
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    check_sae_matches(sae, tiny_bert, layer=2)
    with pytest.raises(
        StudioError, match=r"'blocks.2.hook_resid_post' \(layer 2\), not on layer 1"
    ):
        check_sae_matches(sae, tiny_bert, layer=1)
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_pre"  # = output of block 1
    check_sae_matches(sae, tiny_bert, layer=1)
    sae.cfg.metadata.hook_name = "blocks.1.hook_mlp_out"
    with pytest.raises(StudioError, match="reads the residual stream"):
        check_sae_matches(sae, tiny_bert, layer=1)
    with pytest.raises(StudioError, match="layer 3 is out of range"):
        check_sae_matches(sae, tiny_bert, layer=3)


def test_train_sae_saves_a_loadable_inference_sae(tmp_path: Path) -> None:
    from sae_lens import TopKSAE
    from sae_lens.saes.sae import TrainingSAE

    data = sparse_data()
    seen: list[tuple[int, int]] = []
    result = train_sae(
        data,
        d_in=32,
        width=128,
        k=8,
        epochs=10,
        lr=2e-3,
        batch_size=128,
        seed=1,
        out_dir=tmp_path / "sae",
        hook_name="blocks.1.hook_resid_post",
        model_name="tiny",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert result.n_tokens == 3000 and result.d_sae == 128 and result.k == 8
    assert math.isfinite(result.explained_variance)
    assert 0.5 < result.explained_variance <= 1.0
    assert 0 <= result.dead_features < 128
    assert seen[-1] == (seen[-1][1], (10 * 3000 // 128) * 128)

    sae = load_sae(path=result.path)
    assert isinstance(sae, TopKSAE) and not isinstance(sae, TrainingSAE)
    assert sae_info(sae)["hook_name"] == "blocks.1.hook_resid_post"
    codes = sae.encode(data[:50])
    assert codes.shape == (50, 128)
    assert int((codes > 0).sum(1).max()) <= 8
    # The saved SAE reads raw activations (the training norm scaling is folded in).
    recon = sae.decode(codes)
    explained = 1 - (data[:50] - recon).pow(2).sum() / (data[:50] - data.mean(0)).pow(2).sum()
    assert explained > 0.5
    info = json.loads((Path(result.path) / TRAINING_INFO_FILENAME).read_text())
    assert info["result"]["explained_variance"] == result.explained_variance


def test_train_sae_is_seeded(tmp_path: Path) -> None:
    data = sparse_data(n=1000)
    kwargs: dict[str, Any] = {"d_in": 32, "width": 64, "k": 4, "batch_size": 200}
    a = train_sae(data, seed=3, out_dir=tmp_path / "a", **kwargs)
    b = train_sae(data, seed=3, out_dir=tmp_path / "b", **kwargs)
    c = train_sae(data, seed=4, out_dir=tmp_path / "c", **kwargs)
    wa, wb, wc = (load_file(Path(r.path) / "sae_weights.safetensors") for r in (a, b, c))
    assert all(torch.equal(wa[name], wb[name]) for name in wa)
    assert not torch.equal(wa["W_enc"], wc["W_enc"])
    assert a.explained_variance == b.explained_variance


def test_train_sae_from_a_batch_factory(tmp_path: Path) -> None:
    data = sparse_data(n=1000)

    def epoch() -> Iterator[torch.Tensor]:
        yield from data.split(300)

    result = train_sae(
        epoch, d_in=32, width=64, k=4, epochs=2, batch_size=128, out_dir=tmp_path / "f"
    )
    assert result.n_tokens == 1000
    assert math.isfinite(result.explained_variance) and result.explained_variance > 0


def test_train_sae_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"expected \[n_tokens, 32\]"):
        train_sae(torch.zeros(10, 16), d_in=32, width=64, k=4, out_dir=tmp_path)
    with pytest.raises(StudioError, match="k must be between"):
        train_sae(torch.zeros(10, 32), d_in=32, width=4, k=8, out_dir=tmp_path)
    with pytest.raises(StudioError, match="no activations"):
        train_sae(torch.zeros(0, 32), d_in=32, width=64, k=4, out_dir=tmp_path)
