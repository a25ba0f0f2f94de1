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
    TrainProgress,
    check_sae_matches,
    load_sae,
    quality_warnings,
    sae_info,
    train_sae,
    transfer_warning,
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


# --- raw safetensors checkpoints -------------------------------------------------------------


def _reference(kind: str, *, d_in: int = 64, d_sae: int = 96, seed: int = 0) -> Any:
    """A seeded sae-lens SAE of one architecture with random weights (thresholds > 0)."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    torch.manual_seed(seed)
    sae: Any
    if kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=6))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.2)
        if kind == "jumprelu":
            sae.threshold.uniform_(0.05, 0.2)
    return sae


def _save_raw(path: Path, sae: Any, *, transposed: bool = False) -> Path:
    from safetensors.torch import save_file

    w = {name: t.detach().clone() for name, t in sae.state_dict().items()}
    if transposed:  # dictionary_learning's nn.Linear layout
        w = {
            "encoder.weight": w["W_enc"].T.contiguous(),
            "encoder.bias": w["b_enc"],
            "decoder.weight": w["W_dec"].T.contiguous(),
            "b_dec": w["b_dec"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(w, str(path))
    return path


def test_raw_jumprelu_checkpoint(tmp_path: Path) -> None:
    from sae_lens import JumpReLUSAE

    ref = _reference("jumprelu")
    file = _save_raw(tmp_path / "params.safetensors", ref)
    (tmp_path / "cfg.json").write_text(
        json.dumps({"hook_name": "blocks.1.hook_resid_post", "model_name": "gemma-2-2b"})
    )
    sae = load_sae(path=file)
    assert isinstance(sae, JumpReLUSAE)
    assert sae_info(sae)["hook_name"] == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.model_name == "gemma-2-2b"
    x = torch.randn(20, 64)
    codes = sae.encode(x)
    torch.testing.assert_close(codes, ref.encode(x))
    assert (codes > 0).any() and (codes == 0).any()


def test_raw_transposed_topk_with_k_from_config_or_option(tmp_path: Path) -> None:
    from sae_lens import StandardSAE, TopKSAE

    ref = _reference("topk")
    x = torch.randn(20, 64)
    folder = tmp_path / "topk"
    _save_raw(folder / "ae.safetensors", ref, transposed=True)
    (folder / "config.json").write_text(json.dumps({"k": 6}))
    sae = load_sae(path=folder)  # a folder with one checkpoint and its config
    assert isinstance(sae, TopKSAE) and sae.cfg.k == 6
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 96)
    torch.testing.assert_close(sae.encode(x), ref.encode(x))

    bare = _save_raw(tmp_path / "bare" / "ae.safetensors", ref, transposed=True)
    assert isinstance(load_sae(path=bare), StandardSAE)  # no k anywhere: a ReLU SAE
    with_k = load_sae(path=bare, k=6)
    assert isinstance(with_k, TopKSAE)
    torch.testing.assert_close(with_k.encode(x), ref.encode(x))


def test_raw_checkpoint_errors(tmp_path: Path, tiny_bert: Any) -> None:
    from safetensors.torch import save_file

    save_file(
        {"W_enc": torch.zeros(64, 8), "b_dec": torch.zeros(64)}, str(tmp_path / "a.safetensors")
    )
    with pytest.raises(StudioError, match=r"has no b_enc \(looked for b_enc, encoder\.bias"):
        load_sae(path=tmp_path / "a.safetensors")
    with pytest.raises(StudioError, match=r"is not a \.safetensors checkpoint"):
        (tmp_path / "x.pt").write_bytes(b"")
        load_sae(path=tmp_path / "x.pt")
    save_file({"W_enc": torch.zeros(8, 8)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(StudioError, match=r"several checkpoints \(a.safetensors, b.safetensors\)"):
        load_sae(path=tmp_path)
    # Another model's SAE: the width mismatch is named before any work.
    other = load_sae(path=_save_raw(tmp_path / "o" / "w.safetensors", _reference("relu", d_in=32)))
    with pytest.raises(StudioError, match=r"SAE d_in 32 does not match model '.*' hidden size 64"):
        check_sae_matches(other, tiny_bert, layer=1)


def test_transfer_and_quality_warnings(make_sae: Callable[..., Any], tiny_bert_dir: Path) -> None:
    sae = make_sae()
    assert transfer_warning(sae, "any/model") is None  # no model recorded
    sae.cfg.metadata.model_name = "Qwen/Qwen2.5-Math-1.5B"
    msg = transfer_warning(sae, "Qwen/Qwen2.5-Math-7B")
    assert msg is not None
    assert "'Qwen/Qwen2.5-Math-1.5B'" in msg and "'Qwen/Qwen2.5-Math-7B'" in msg
    assert transfer_warning(sae, "Qwen/Qwen2.5-Math-1.5B") is None
    sae.cfg.metadata.model_name = str(tiny_bert_dir)
    assert transfer_warning(sae, str(tiny_bert_dir) + "/") is None  # the same folder
    sae.cfg.metadata.model_name = None

    assert quality_warnings(0.9, 10, 256) == []
    poor = quality_warnings(0.42, 100, 256)
    assert len(poor) == 2
    assert "explained variance 0.420 is below 0.7" in poor[0] and "--epochs" in poor[0]
    assert "100 of 256 features (39%) never fire" in poor[1] and "--width" in poor[1]


def test_train_sae_reports_as_it_goes(tmp_path: Path) -> None:
    data = sparse_data(n=2000)
    looks: list[TrainProgress] = []
    result = train_sae(
        data,
        d_in=32,
        width=64,
        k=4,
        epochs=4,
        batch_size=100,
        lr=2e-3,
        out_dir=tmp_path / "r",
        report=looks.append,
        eval_every=20,
    )
    steps = 4 * 2000 // 100
    assert [p.step for p in looks] == [20, 40, 60, steps]
    assert all(p.steps == steps and p.d_sae == 64 for p in looks)
    assert [p.epoch for p in looks] == [1.0, 2.0, 3.0, 4.0]
    assert all(math.isfinite(p.explained_variance) for p in looks)
    assert looks[-1].explained_variance == result.explained_variance
    assert looks[-1].dead_features == result.dead_features
    assert looks[-1].explained_variance > looks[0].explained_variance - 0.05
