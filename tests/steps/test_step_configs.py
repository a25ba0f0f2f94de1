"""The steps' config dataclasses: defaults written once (read from the pure modules' configs),
every option checked on construction with an error naming the field or flag, and the featurize
run config byte-identical to the one earlier versions stored (resume depends on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.defaults import DEFAULT_TOP_K
from core.errors import StudioError
from core.features import FeatureConfig
from core.probes import ProbeConfig
from core.sae import SaeTrainConfig
from core.steps.featurize import (
    FeaturizeConfig,
    TrainSAEConfig,
    feature_run_config,
)
from core.steps.featurize_ray import RayOptions
from core.steps.judge import JudgeRequest
from core.steps.probes import ProbeRequest
from core.steps.rewards import RewardProbeConfig, RewardScoringConfig
from core.steps.rules import RemovedViewRequest
from core.store import Views


def _featurize(**over: object) -> FeaturizeConfig:
    options: dict[str, object] = {"dataset": "d", "model": "m", "sae_path": "sae"}
    return FeaturizeConfig(**{**options, **over})  # type: ignore[arg-type]


def test_featurize_config_takes_its_defaults_from_feature_config() -> None:
    cfg = _featurize()
    base = FeatureConfig()
    assert (cfg.pooling, cfg.top_k, cfg.batch_size) == (base.pooling, base.top_k, base.batch_size)
    assert cfg.top_k == DEFAULT_TOP_K and cfg.layer is None and cfg.resume


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sae_path": None}, "exactly one of --sae-path"),
        ({"sae_release": "rel/id"}, "exactly one of --sae-path"),
        ({"chunk_size": 0}, "--chunk-size must be at least 1"),
        ({"sae_k": 0}, "--sae-k must be at least 1"),
        ({"top_k": 0}, r"top_k must be at least 1, got 0 \(--top-k\)"),
        ({"pooling": "median"}, "pooling must be one of"),
        ({"dtype": "int8"}, r"dtype must be auto or one of .*\(--dtype\)"),
        ({"dataset": ""}, r"dataset must be given \(--dataset\)"),
    ],
)
def test_featurize_config_checks_every_option(over: dict[str, object], message: str) -> None:
    with pytest.raises(StudioError, match=message):
        _featurize(**over)


def test_the_featurize_run_config_is_what_earlier_versions_stored() -> None:
    """Byte for byte: an interrupted run of an earlier version resumes only with the same JSON."""
    used = _featurize(sae_path="/abs/sae", hook="blocks.1.hook_resid_post").chosen(
        layer=1, max_length=256
    )
    assert used.hook is None and used.layer == 1
    plain = feature_run_config(used, dtype="float32")
    assert json.dumps(plain) == (
        '{"model": "m", "layer": 1, "hook": "blocks.1.hook_resid_post", "sae": "/abs/sae", '
        '"pooling": "mean", "top_k": 64, "max_length": 256}'
    )
    full = _featurize(
        sae_path="/abs/sae", pool_over="response", chat_template=True, dense=True
    ).chosen(layer=1, max_length=256)
    assert list(feature_run_config(full, dtype="bfloat16"))[-4:] == [
        "pool_over",
        "chat_template",
        "dtype",
        "dense",
    ]
    with pytest.raises(StudioError, match="layer and max_length chosen"):
        feature_run_config(_featurize(), dtype="float32")


def test_the_sae_name_is_the_resolved_path_or_the_release() -> None:
    assert _featurize(sae_path="sae").sae_name == str(Path("sae").resolve())
    assert _featurize(sae_path=None, sae_release="rel/id").sae_name == "rel/id"


def test_train_sae_config_extends_the_sae_options() -> None:
    cfg = TrainSAEConfig(dataset="d", model="m", layer=1)
    assert (cfg.k, cfg.epochs, cfg.lr) == (SaeTrainConfig().k, SaeTrainConfig().epochs, 1e-3)
    with pytest.raises(StudioError, match="--lr must be a positive finite number"):
        TrainSAEConfig(dataset="d", model="m", lr=0.0)
    with pytest.raises(StudioError, match=r"model must be given \(--model\)"):
        TrainSAEConfig(dataset="d", model="")


def test_ray_options_check_their_counts() -> None:
    assert RayOptions().address == "local"
    with pytest.raises(StudioError, match="--workers must be at least 1, got 0"):
        RayOptions(num_workers=0)
    with pytest.raises(StudioError, match="--ray-cpus must be at least 1"):
        RayOptions(num_cpus=-1)


def test_probe_request_checks_signal_direction_and_fitting_options() -> None:
    req = ProbeRequest("demo", "quality", "quality")
    assert (req.folds, req.min_labels) == (ProbeConfig.folds, ProbeConfig.min_labels)
    assert req.fit_config("ridge").kind == "ridge"
    with pytest.raises(StudioError, match="unknown signal"):
        ProbeRequest("demo", "speed", "x")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match=r"higher_is must be one of harder, easier"):
        ProbeRequest("demo", "difficulty", "x", higher_is="better")
    with pytest.raises(StudioError, match="probe folds must be at least 2"):
        ProbeRequest("demo", "quality", "quality", folds=1)


def test_reward_configs_check_their_options() -> None:
    cfg = RewardScoringConfig("chats", "path/to/rm-model", "scalar")
    assert cfg.reward_name == "rm-model" and cfg.batch_size == 16
    with pytest.raises(StudioError, match="--head must be one of"):
        RewardScoringConfig("chats", "m", "linear")  # type: ignore[arg-type]
    with pytest.raises(StudioError, match="chunk size must be at least 1"):
        RewardScoringConfig("chats", "m", "scalar", chunk_size=0)
    with pytest.raises(StudioError, match="--name must be a non-empty name"):
        RewardScoringConfig("chats", "m", "scalar", name="  ")
    with pytest.raises(StudioError, match="features must be one of"):
        RewardProbeConfig("prefs", features="tfidf")
    with pytest.raises(StudioError, match="BT probe penalty must be one of"):
        RewardProbeConfig("prefs", penalty="l3")  # type: ignore[arg-type]


def test_judge_and_removed_view_requests_check_their_options() -> None:
    with pytest.raises(StudioError, match=r"side must be one of .*\(--side\)"):
        JudgeRequest("prefs", side="middle")
    with pytest.raises(StudioError, match=r"n_bins must be at least 1, got 0 \(--bins\)"):
        JudgeRequest("prefs", n_bins=0)
    views = Views(None, None, None)
    assert RemovedViewRequest("d", views=views, filters=[], ids=["a"], names=["selection"])
    with pytest.raises(StudioError, match="expected 1"):
        RemovedViewRequest("d", views=views, filters=[], ids=["a"], names=[])
