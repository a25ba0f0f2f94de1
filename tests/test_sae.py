"""core.sae: loading and checking SAEs, and training one with sae-lens's trainer."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.errors import StudioError
from core.sae import (
    TRAINING_INFO_FILENAME,
    SaeTrainConfig,
    TrainProgress,
    check_sae_matches,
    check_sae_out,
    leftover_temp_dirs,
    load_sae,
    quality_warnings,
    sae_info,
    train_sae,
    training_info,
    transfer_warning,
)
from tests.conftest import run_cli


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- options checked once, before any work (train-sae) -----------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"width": 0}, "--width must be at least 1, got 0"),
        ({"width": -8}, "--width must be at least 1, got -8"),
        ({"k": 0}, "--k must be at least 1, got 0"),
        ({"epochs": -1}, "--epochs must be at least 1, got -1"),
        ({"lr": float("nan")}, "--lr must be a positive finite number, got nan"),
        ({"lr": float("inf")}, "--lr must be a positive finite number, got inf"),
        ({"lr": 0.0}, "--lr must be a positive finite number, got 0.0"),
        ({"lr": -1e-3}, "--lr must be a positive finite number"),
        ({"batch_tokens": 0}, "--batch-tokens must be at least 1"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
        ({"max_length": 1}, "--max-length must be at least 2"),
        ({"eval_every": 0}, "--eval-every must be at least 1"),
        ({"seed": -1}, "--seed must be 0 or more"),
        ({"width": 16, "k": 32}, "--k 32 must not exceed --width 16"),
    ],
)
def test_sae_train_config_names_the_bad_flag(options: dict[str, Any], words: str) -> None:
    with pytest.raises(StudioError, match="^" + re.escape(words)):
        SaeTrainConfig(**options)


def test_sae_train_config_defaults_mean_the_model_decides() -> None:
    cfg = SaeTrainConfig()
    assert cfg.width is None and cfg.max_length is None and cfg.eval_every is None
    assert SaeTrainConfig(width=64, k=64).width == 64


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--width", "0"], "--width must be at least 1, got 0"),
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
        (["--k", "0"], "--k must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--batch-tokens", "-5"], "--batch-tokens must be at least 1, got -5"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
        (["--max-length", "0"], "--max-length must be at least 2, got 0"),
        (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
    ],
)
def test_train_sae_cli_bad_number_is_one_line_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    """The model path does not exist and neither does the store: had either been opened first,
    the error would name them instead of the flag."""
    db = tmp_path / "none.duckdb"
    argv = ["train-sae", "--dataset", "d", "--model", "/nonexistent/model", "--layer", "1"]
    assert run_cli(*argv, *flags, "--db", str(db)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {words}"]
    assert not db.exists()


# --- the SAE folder appears only when complete -----------------------------------------------


def _tiny_train(out: Path, **kwargs: Any) -> Any:
    """A seconds-short training on 400 tokens (16 features)."""
    options: dict[str, Any] = {"d_in": 32, "width": 16, "k": 2, "batch_size": 100}
    return train_sae(sparse_data(n=400), out_dir=out, **{**options, **kwargs})


@pytest.mark.slow
def test_failed_training_leaves_no_folder(tmp_path: Path) -> None:
    """An error after the weights were saved (here: in the final report) leaves neither the
    SAE folder nor a temp folder: nothing that featurize could take for a finished SAE."""

    def report(p: TrainProgress) -> None:
        if p.step == p.steps:  # the final look, after the SAE was saved
            raise KeyboardInterrupt

    out = tmp_path / "saes" / "sae"
    with pytest.raises(KeyboardInterrupt):
        _tiny_train(out, report=report)
    assert not out.exists()
    assert list((tmp_path / "saes").iterdir()) == []


@pytest.mark.slow
def test_training_replaces_an_earlier_sae_and_records_its_run(tmp_path: Path) -> None:
    out = tmp_path / "sae"
    first = _tiny_train(out, seed=1)
    before = load_file(out / "sae_weights.safetensors")["W_enc"]
    second = _tiny_train(out, seed=2, run={"store": "/x/studio.duckdb", "run_id": 7})
    assert first.path == second.path == str(out)
    assert not torch.equal(before, load_file(out / "sae_weights.safetensors")["W_enc"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp folder left
    info = training_info(out)
    assert info is not None and info["run"] == {"store": "/x/studio.duckdb", "run_id": 7}
    assert info["result"]["path"] == str(out)


def test_out_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StudioError, match=r"is a folder holding other files \(notes\.txt\), not"):
        check_sae_out(other)
    with pytest.raises(StudioError, match=r"holding other files \(notes\.txt\)"):
        train_sae(sparse_data(n=50), d_in=32, width=16, k=2, out_dir=other)
    assert (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudioError, match="is a file: give a folder"):
        check_sae_out(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert check_sae_out(tmp_path / "empty") == tmp_path / "empty"


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temp_dirs_are_ours_and_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / f".studio-sae-tmp-{_dead_pid()}-0123abcd-sae"
    aside = tmp_path / f".studio-sae-old-{_dead_pid()}-89abcdef-sae"
    live = tmp_path / f".studio-sae-tmp-{os.getpid()}-0123abcd-sae"
    for folder in (dead, aside, live, tmp_path / ".studio-sae-tmp-notapid-sae", tmp_path / "sae"):
        folder.mkdir()
        (folder / "cfg.json").write_text("{}")
    (tmp_path / f".studio-sae-tmp-{_dead_pid()}-0123abcd-file").write_text("not a folder")
    assert leftover_temp_dirs(tmp_path) == sorted([dead, aside])
    assert leftover_temp_dirs(tmp_path / "missing") == []


@pytest.mark.slow
def test_training_sweeps_temp_folders_of_killed_runs(tmp_path: Path) -> None:
    dead = tmp_path / f".studio-sae-tmp-{_dead_pid()}-0123abcd-sae"
    live = tmp_path / f".studio-sae-tmp-{os.getpid()}-0123abcd-other"
    for folder in (dead, live):
        folder.mkdir()
    _tiny_train(tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "sae"])


def test_load_sae_refuses_temp_and_incomplete_folders(tmp_path: Path, tiny_sae_dir: Path) -> None:
    import shutil

    pid = _dead_pid()
    temp = tmp_path / f".studio-sae-tmp-{pid}-0123abcd-sae"
    shutil.copytree(tiny_sae_dir, temp)
    with pytest.raises(
        StudioError,
        match=rf"is a temporary folder of an unfinished train-sae \(process {pid}, killed",
    ):
        load_sae(path=temp)
    with pytest.raises(StudioError, match="temporary folder of an unfinished train-sae"):
        load_sae(path=temp / "sae_weights.safetensors")

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_sae_dir / "cfg.json", no_weights / "cfg.json")
    with pytest.raises(StudioError, match=r"lacks sae_weights\.safetensors: it is incomplete"):
        load_sae(path=no_weights)
    ours = tmp_path / "ours"
    ours.mkdir()
    shutil.copy(tiny_sae_dir / "sae_weights.safetensors", ours / "sae_weights.safetensors")
    (ours / TRAINING_INFO_FILENAME).write_text("{}")
    with pytest.raises(StudioError, match=r"lacks cfg\.json: it is incomplete"):
        load_sae(path=ours)


# --- truncated or corrupt weights: one line naming the file -----------------------------------


def _cut(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_truncated_or_garbled_sae_weights_are_named(tmp_path: Path, tiny_sae_dir: Path) -> None:
    import shutil

    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, folder)
    weights = folder / "sae_weights.safetensors"
    _cut(weights)
    with pytest.raises(StudioError) as err:
        load_sae(path=folder)
    msg = str(err.value)
    assert msg.startswith(f"SAE weights file '{weights}' is truncated or corrupt (")
    assert "\n" not in msg
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(StudioError, match=r"is truncated or corrupt \(invalid JSON in header"):
        load_sae(path=folder)

    raw = _save_raw(tmp_path / "raw" / "ae.safetensors", _reference("relu"))
    _cut(raw)
    with pytest.raises(StudioError, match=rf"^SAE checkpoint '{raw}' is truncated or corrupt"):
        load_sae(path=raw)
    with pytest.raises(StudioError, match=r"SAE checkpoint .* is truncated or corrupt"):
        load_sae(path=raw.parent)  # the folder holding it


def test_sae_weights_with_nan_are_refused(tmp_path: Path) -> None:
    ref = _reference("relu")
    with torch.no_grad():
        ref.W_dec[0, 0] = float("nan")
    raw = _save_raw(tmp_path / "nan.safetensors", ref)
    with pytest.raises(StudioError, match=r"W_dec holds NaN or infinite values"):
        load_sae(path=raw)
    folder = tmp_path / "lens"
    ref.save_model(str(folder))
    with pytest.raises(StudioError, match=r"sae_weights\.safetensors' is truncated or corrupt"):
        load_sae(path=folder)


def test_featurize_cli_on_a_truncated_sae_is_one_line(
    tmp_path: Path, tiny_bert_dir: Path, tiny_sae_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, folder)
    _cut(folder / "sae_weights.safetensors")
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "prompt": "one two"}\n')
    db = str(tmp_path / "s.duckdb")
    assert run_cli("ingest", str(data), "--dataset", "d", "--kind", "prompts", "--db", db) == 0
    model = ["--model", str(tiny_bert_dir), "--layer", "1"]
    assert (
        run_cli("featurize", "--dataset", "d", *model, "--sae-path", str(folder), "--db", db) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sae_weights.safetensors' is truncated or corrupt" in err[0]
