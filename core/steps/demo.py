"""The demo build: every step in order on the packaged MiniLM and the synthetic demo data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from core.clustering import (
    ClusterConfig,
)
from core.demo_data import (
    DEMO_ROLLOUT_SOURCE,
    write_demo_chats,
    write_demo_jsonl,
    write_demo_preferences,
    write_demo_rollouts,
)
from core.projection import ProjectConfig
from core.steps.base import (
    MINILM_HUB_ID,
)
from core.steps.featurize import FeaturizeConfig, TrainSAEConfig, featurize, train_sae
from core.steps.ingest import ingest, ingest_rollouts
from core.steps.probes import ProbeRequest, probe
from core.steps.rewards import (
    PROBE_FEATURES,
    RewardProbeConfig,
    responses_dataset,
    reward_probe,
    verify_dataset,
)
from core.steps.space import cluster, dedup, project
from core.store import Store

# --- demo ------------------------------------------------------------------------------------
# --- demo ------------------------------------------------------------------------------------
DEMO_LAYER = 3  # MiniLM has 6 layers; 3 is in the middle


DEMO_SAE_WIDTH = 3072


DEMO_SAE_K = 32


DEMO_PREF_N = 300  # rows of the demo's preference and chat sets (kinds preferences, chats)


def build_demo(
    db: str | Path,
    *,
    n: int = 3000,
    seed: int = 0,
    work: str | Path = "data/demo",
    epochs: int = 2,
) -> Path:
    """Build the demo database from scratch: reasoning-gym prompts -> ingest -> train an SAE on
    MiniLM layer 3 -> featurize (with the dense baseline) -> cluster (k sweep, baselines) ->
    near-duplicates -> simulated rollouts -> a preference set and a chat set (verified
    reasoning-gym answers) -> difficulty and quality probes -> project -> the preference set's
    responses featurized, clustered and mapped, with reward probes on them. Written to a temp
    file, renamed at the end, so an interrupted build never leaves a half-built demo behind."""

    db = Path(db)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(db.name + ".building")
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        p.unlink(missing_ok=True)
    store = Store(tmp)
    jsonl = work / "demo.jsonl"
    sae_dir = work / "sae-minilm-L3"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)

    def rollouts() -> None:
        path = write_demo_rollouts(work / "rollouts.jsonl", jsonl, seed=seed)
        ingest_rollouts(store, dataset="demo", path=path, source=DEMO_ROLLOUT_SOURCE)

    def responses() -> None:
        """demo_prefs's responses featurized on their own (read after their prompt), clustered
        and mapped; Bradley-Terry reward probes on their SAE and dense features."""
        name = responses_dataset(store, dataset="demo_prefs")
        featurize(
            store,
            FeaturizeConfig(
                dataset=name,
                model=MINILM_HUB_ID,
                layer=DEMO_LAYER,
                sae_path=str(sae_dir),
                pool_over="response",
                dense=True,
                resume=False,
            ),
        )
        cluster(store, dataset=name, cfg=ClusterConfig(seed=seed, sweep="auto"))
        project(store, dataset=name, cfg=ProjectConfig(seed=seed))
        for features in PROBE_FEATURES:
            reward_probe(
                store, RewardProbeConfig(dataset="demo_prefs", features=features, seed=seed)
            )

    # (what the progress bar shows, the step): run in order, one tick each
    pipeline: list[tuple[str, Callable[[], object]]] = [
        ("generate problems", lambda: write_demo_jsonl(jsonl, n=n, seed=seed)),
        ("ingest", lambda: ingest(store, jsonl, dataset="demo", kind="prompts")),
        (
            "train SAE",
            lambda: train_sae(
                store,
                TrainSAEConfig(
                    dataset="demo",
                    model=MINILM_HUB_ID,
                    layer=DEMO_LAYER,
                    out=sae_dir,
                    width=DEMO_SAE_WIDTH,
                    k=DEMO_SAE_K,
                    epochs=epochs,
                    seed=seed,
                ),
            ),
        ),
        (
            "featurize",
            lambda: featurize(
                store,
                FeaturizeConfig(
                    dataset="demo",
                    model=MINILM_HUB_ID,
                    layer=DEMO_LAYER,
                    sae_path=str(sae_dir),
                    dense=True,  # the demo shows the dense baseline beside the SAE features
                    resume=False,
                ),
            ),
        ),
        (
            "cluster (k sweep, baselines)",
            lambda: cluster(
                store,
                dataset="demo",
                cfg=ClusterConfig(seed=seed, sweep="auto"),
                baselines=("dense", "tfidf"),
            ),
        ),
        ("near-duplicates", lambda: dedup(store, dataset="demo")),
        ("rollouts (simulated)", rollouts),
        (
            "preference and chat sets, verifier",
            lambda: (
                ingest(
                    store,
                    write_demo_preferences(work / "prefs.jsonl", n=DEMO_PREF_N, seed=seed),
                    dataset="demo_prefs",
                    kind="preferences",
                ),
                ingest(
                    store,
                    write_demo_chats(work / "chats.jsonl", n=DEMO_PREF_N, seed=seed),
                    dataset="demo_chats",
                    kind="chats",
                ),
                verify_dataset(store, dataset="demo_prefs"),
            ),
        ),
        (
            "difficulty probe",
            lambda: probe(store, ProbeRequest("demo", "difficulty", "difficulty", seed=seed)),
        ),
        (
            "quality probe",
            lambda: probe(store, ProbeRequest("demo", "quality", "quality", seed=seed)),
        ),
        ("project (UMAP)", lambda: project(store, dataset="demo", cfg=ProjectConfig(seed=seed))),
        ("responses: features, clusters, map, reward probes", responses),
    ]
    steps = tqdm(total=len(pipeline), desc="demo", unit="step", position=0)
    for label, step in pipeline:
        steps.set_postfix_str(label)
        step()
        steps.update()
    steps.close()
    db.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, db)
    return db
