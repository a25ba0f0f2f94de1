"""``python -m core <command>``: the batch pipeline. Each command calls one core function.

The commands are one table, ``COMMANDS``: name -> Command(help, add_arguments, handler, target).
``build_parser`` adds every command's flags from it, ``run`` dispatches through it, and README's
"Where each command lives" table is generated from it (tests/cli/test_readme.py), so the three
cannot drift apart. Handlers import core lazily so that ``--help`` loads no pandas, duckdb or torch.

Errors a user can fix print one line (``error: ...``) and exit 2; nothing is half-written. A core
error that names a config field (``StudioError(..., field="mix")``) is printed with the flag that
sets it (``FLAGS``), so core can speak of fields while the CLI speaks of flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from core.defaults import (
    DEFAULT_DB,
    DEFAULT_EXPORT_DIR,
    DEFAULT_MIX,
    DEFAULT_SAE_DIR,
    DEFAULT_TOP_K,
    DEMO_DB,
)
from core.errors import StudioError
from core.signal_registry import REGISTRY as SIGNAL_REGISTRY
from core.signal_registry import SignalSpec

if TYPE_CHECKING:
    from core.store import Store

# core.export's ORDERS and FORMATS, spelled out so `--help` does not import pandas
# (tests/test_rules.py checks they agree)
EXPORT_ORDERS = ("curriculum", "easy-to-hard", "random", "none")
EXPORT_FORMATS = ("jsonl", "parquet", "hf", "verl", "trl-prompt", "trl-preference", "trl-messages")

# A config field -> the flag that sets it, where the flag is not the field with dashes
# (``batch_size`` -> ``--batch-size`` needs no line). Used to print a core error's field.
FLAGS: dict[str, str] = {
    "fmt": "--format",
    "container": "--to",
    "sae_release": "--sae",
    "higher_is": "--higher",
    "value_range": "--range",
    "calibration_label": "--calibration",
    "n_bins": "--bins",
    "num_workers": "--workers",
    "num_cpus": "--ray-cpus",
    "address": "--ray",
    "mapping": "--map",
    "ks": "--k",
    "run_id": "--run",
    "resume": "--no-resume",
}

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its flags, and the handler that maps them to one call.

    ``target`` is the ``module:function`` the handler calls (README's table shows it);
    ``also`` lists other core functions it calls, each with when (``("core.x:f", "with --ray")``).
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    target: str
    also: tuple[tuple[str, str], ...] = ()
    db_default: str = DEFAULT_DB


def flag_for(field: str) -> str:
    """The CLI flag that sets a config field: ``mix`` -> ``--mix``, ``fmt`` -> ``--format``."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def error_line(exc: StudioError) -> str:
    """A core error as the CLI prints it, its field spelled as the flag that sets it."""
    field = getattr(exc, "field", None)
    return exc.render(flag_for(field)) if field else str(exc)


# --- reading flag values --------------------------------------------------------------------------
def _mapping(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise StudioError(f"--map {item!r}: expected FIELD=COLUMN, e.g. --map prompt=question")
        out[field.strip()] = column.strip()
    return out


def _names(text: str | None) -> list[str]:
    """'dense,tfidf' -> ['dense', 'tfidf']; 'none' or '' -> []."""
    if not text or text.strip().lower() == "none":
        return []
    return [p.strip() for p in text.split(",") if p.strip()]


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError as exc:
        raise StudioError(f"--range {text!r}: expected LO,HI (two numbers)") from exc
    if lo > hi:
        raise StudioError(f"--range {text!r}: LO is above HI")
    return lo, hi


def _read_ids(path: str | None) -> list[str] | None:
    """The ids listed in a file, one per line (None without a file)."""
    if path is None:
        return None
    try:
        return [
            ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()
        ]
    except OSError as exc:
        raise StudioError(f"--ids {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise StudioError(
            f"--ids {path}: not UTF-8 text (byte {exc.start}): one id per line"
        ) from None


def _store(args: argparse.Namespace) -> Store:
    """The store named by --db (imported here: duckdb is not loaded for --help)."""
    from core.store import Store

    return Store(args.db)


def warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


# --- printing results -----------------------------------------------------------------------------
def _table(df: Any) -> str:
    """A frame as aligned text, numbers to 3 decimals."""
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–")


def _print_export(m: dict[str, Any], *, out: str) -> None:
    """What an export wrote, and what it left out and why, one line each."""
    print(f"wrote {m['rows']} rows to {out} (manifest {out}.manifest.json)")
    lengths = m.get("lengths")
    if lengths and lengths["dropped"]:
        print(
            f"dropped {lengths['dropped']} of {lengths['rows_checked']} rows longer than "
            f"{lengths['max_length']} tokens ({lengths['measured']}); their ids are in the "
            "manifest's lengths.dropped_ids",
            file=sys.stderr,
        )
    if m.get("responses") and m["responses"]["kept"] == "chosen":
        print(f"note: {m['responses']['why']}", file=sys.stderr)
    reward = (m.get("train") or {}).get("reward_function")
    if reward:
        print(f"reward function: {reward['path']} ({reward['name']})")
    train = m.get("train")
    if train and "overrides" in train:
        print(f"train: {train['command']}")
    elif train:
        print(f"train with {train['trainer']}: the manifest's train.snippet")


def _print_report(report: Any, *, rule_set: Any, path: str, dataset: str, show: int) -> None:
    """The removed view as text: per rule, remaining per cluster and per difficulty band, and
    the first ``show`` removed rows with the rules that removed them."""
    print(
        f"rule set '{rule_set.name}' ({path}) on dataset '{dataset}': {len(rule_set.rules)} "
        f"rules; kept {report.kept} of {report.total} rows ({report.total - report.kept} removed)"
    )
    if not report.per_rule.empty:
        print(
            "\nRows removed per rule (removes: on its own; first: not removed by an earlier "
            "rule; only: by no other rule)"
        )
        print(_table(report.per_rule))
    if not report.per_cluster.empty:
        print("\nRemaining per cluster (-1: no cluster)")
        print(_table(report.per_cluster))
    if report.bands is not None:
        direction = "higher = easier" if report.bands.higher_is == "easier" else "higher = harder"
        print(f"\nRemaining per difficulty band ({report.difficulty}, {direction}; easy first)")
        print(_table(report.per_band))
    else:
        print("\nNo difficulty column: no bands (name one with --difficulty-column)")
    removed = report.removed_rows()
    if show > 0 and not removed.empty:
        print(f"\nRemoved rows and why (first {min(show, len(removed))} of {len(removed)})")
        for row in removed.head(show).to_dict("records"):
            prompt = " ".join(str(row.get("prompt", "")).split())[:60]
            where = f"  cluster {row['cluster']}" if "cluster" in row else ""
            print(f"{row['id']}{where}  [{row['why']}]  {prompt}")


# --- flag groups shared by several commands -------------------------------------------------------
def _dataset(sp: argparse.ArgumentParser, help: str | None = None) -> None:
    sp.add_argument("--dataset", required=True, help=help)


def _seed(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--seed", type=int, default=0)


def _feature_run(
    sp: argparse.ArgumentParser, help: str = "feature run id (default: the latest)"
) -> None:
    sp.add_argument("--feature-run", type=int, help=help)


def _responses_set(sp: argparse.ArgumentParser) -> None:
    """--dataset of the commands that read a preference set's DATASET.responses."""
    _dataset(sp, "a preference set with DATASET.responses")


C = TypeVar("C")


def _from_flags(cls: type[C], args: argparse.Namespace, **given: Any) -> C:
    """A step's config (a dataclass) with each field read from the flag of the same name
    (``--batch-size`` -> ``batch_size``), except the fields ``given``: flags named otherwise or
    parsed further (``resume=not args.no_resume``). A field without a flag keeps its default,
    so the config's defaults and checks are the ones that hold."""
    names = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    named = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**{**named, **given})


def _device_args(sp: argparse.ArgumentParser) -> None:
    """Where a model runs and in which dtype (every command that loads one)."""
    sp.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, cuda:1 ...",
    )
    sp.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="model weights: auto = bfloat16 on a GPU, float32 on CPU",
    )


def _resume_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--no-resume",
        action="store_true",
        help="start a new run even if an interrupted one with the same config exists",
    )


def _model_args(sp: argparse.ArgumentParser, *, layer_required: bool) -> None:
    """--dataset, the model, the layer it is read at and its length cap (train-sae, featurize)."""
    _dataset(sp)
    sp.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_HUB_ID",
        help="a transformers model folder or hub id ('minilm' = the packaged "
        "all-MiniLM-L6-v2); Qwen2/2.5/3, Llama, Gemma/Gemma 2, GPT-2, BERT and kin",
    )
    where = sp.add_mutually_exclusive_group(required=layer_required)
    where.add_argument(
        "--layer",
        type=int,
        help="block index L (0-based); features read its residual output, "
        "i.e. sae-lens blocks.L.hook_resid_post (-1: the embeddings)",
    )
    where.add_argument(
        "--hook",
        metavar="NAME",
        help="the layer as a sae-lens hook name instead: blocks.L.hook_resid_post, or "
        "blocks.L.hook_resid_pre (= layer L-1; blocks.0.hook_resid_pre = the embeddings)"
        + ("" if layer_required else "; with neither, the SAE's own hook is used"),
    )
    sp.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="tokens per example (a chat template's own tokens count too); longer examples "
        "are truncated, counted and reported (default: the model's context, at most 2048)",
    )
    _device_args(sp)


def _ids_file(sp: argparse.ArgumentParser, help: str) -> None:
    sp.add_argument("--ids", metavar="FILE", help=help)


# --- ingest ---------------------------------------------------------------------------------------
def _ingest_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", help="the file or folder to read")
    _dataset(sp, "name for the dataset in the store")
    sp.add_argument("--kind", required=True, choices=["prompts", "preferences", "chats"])
    sp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="read our field from another column, e.g. --map prompt=question",
    )
    sp.add_argument("--replace", action="store_true", help="overwrite a dataset of that name")


def _ingest(args: argparse.Namespace) -> int:
    from core.steps.ingest import ingest

    n = ingest(
        _store(args),
        args.path,
        dataset=args.dataset,
        kind=args.kind,
        mapping=_mapping(args.map),
        replace=args.replace,
    )
    print(f"ingested {n} {args.kind} into dataset '{args.dataset}' ({args.db})")
    return 0


# --- train-sae ------------------------------------------------------------------------------------
def _train_sae_args(sp: argparse.ArgumentParser) -> None:
    _model_args(sp, layer_required=True)
    sp.add_argument(
        "--out",
        help=f"folder to write the SAE to: a new or empty one, or an earlier SAE's, which is "
        f"replaced once the new one is complete (default {DEFAULT_SAE_DIR}/DATASET-MODEL-L-W-K)",
    )
    sp.add_argument(
        "--width", type=int, help="SAE features, at least --k (default 8 x hidden size)"
    )
    sp.add_argument("--k", type=int, default=32, help="active features per token (TopK)")
    sp.add_argument("--epochs", type=int, default=2, help="passes over the training tokens")
    sp.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam), above 0")
    sp.add_argument("--batch-tokens", type=int, default=1024, help="tokens per training step")
    sp.add_argument(
        "--eval-every",
        type=int,
        help="print explained variance and dead features every N steps (default: 5 looks)",
    )
    sp.add_argument(
        "--max-tokens",
        type=int,
        default=1_000_000,
        help="cap on training tokens (sampled across the dataset)",
    )
    _seed(sp)


def _train_progress(p: Any) -> None:
    """One stderr line per look at a training SAE (a core.sae.TrainProgress)."""
    print(
        f"step {p.step}/{p.steps} (epoch {p.epoch:.2f}): explained variance "
        f"{p.explained_variance:.3f}, dead features {p.dead_features} of {p.d_sae}",
        file=sys.stderr,
        flush=True,
    )


def _train_sae(args: argparse.Namespace) -> int:
    from core.steps.featurize import TrainSAEConfig, train_sae

    cfg = _from_flags(TrainSAEConfig, args)
    s = train_sae(_store(args), cfg, report=_train_progress)
    print(f"wrote SAE to {s['path']}")
    print(
        f"explained variance {s['explained_variance']:.3f}; dead features "
        f"{s['dead_features']} of {s['d_sae']}; trained on {s['n_tokens']} tokens"
    )
    for warning in s["warnings"]:
        print(f"warning: {warning}")
    return 0


# --- featurize ------------------------------------------------------------------------------------
def _featurize_args(sp: argparse.ArgumentParser) -> None:
    _model_args(sp, layer_required=False)
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--sae-path",
        metavar="PATH",
        help="a sae-lens SAE folder, or a raw .safetensors checkpoint (file, or folder with "
        "one): W_enc, b_enc, W_dec, b_dec, plus threshold (JumpReLU) or k (TopK, from a "
        "cfg.json/config.json beside it or --sae-k)",
    )
    g.add_argument("--sae", metavar="RELEASE/ID", help="a sae-lens release and SAE id (needs hub)")
    sp.add_argument(
        "--sae-k", type=int, help="k of a raw TopK checkpoint whose config does not give it"
    )
    sp.add_argument(
        "--pooling",
        choices=["mean", "max", "sum", "count"],
        default="mean",
        help="per feature over the pooled tokens: mean, max, sum, or count of tokens where "
        "it fires",
    )
    sp.add_argument(
        "--pool-over",
        choices=["prompt", "response", "both"],
        default="prompt",
        help="which tokens are pooled: the prompt (the example's text), the chosen response, "
        "or both (responses need preference data); with a response the model reads the prompt "
        "then the response",
    )
    sp.add_argument(
        "--chat-template",
        action="store_true",
        help="render the prompt as a user message (and the response as the assistant's) with "
        "the tokenizer's chat template",
    )
    sp.add_argument(
        "--dense",
        action="store_true",
        help="also store the mean-pooled hidden state of the layer (d_model floats per example) "
        "as the dense baseline the probes and clustering are compared against",
    )
    sp.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="features kept per example")
    sp.add_argument("--batch-size", type=int, default=32, help="examples per model forward")
    sp.add_argument("--chunk-size", type=int, default=512, help="examples per commit")
    _ray_args(sp)
    _resume_arg(sp)


def _ray_args(sp: argparse.ArgumentParser) -> None:
    """featurize's Ray engine: where Ray runs, with how many actors, and where shards go."""
    sp.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run as a Ray Data pipeline: 'local' starts Ray here, else a cluster address "
        "('auto', 'ray://head:10001'); model + SAE in one actor per GPU (or CPU slot), Parquet "
        "shards loaded into DuckDB in bulk (needs: pip install -r requirements-ray.txt)",
    )
    sp.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else CPUs/8)")
    sp.add_argument("--ray-cpus", type=int, help="CPUs for a local Ray (default: all)")
    sp.add_argument(
        "--shard-dir", help="where Ray writes Parquet shards (a folder every node can reach)"
    )


def _featurize(args: argparse.Namespace) -> int:
    from core.steps.featurize import FeaturizeConfig

    store = _store(args)
    cfg = _from_flags(FeaturizeConfig, args, sae_release=args.sae, resume=not args.no_resume)
    if args.ray:
        from core.steps.featurize_ray import RayOptions, featurize_ray

        options = _from_flags(
            RayOptions, args, address=args.ray, num_workers=args.workers, num_cpus=args.ray_cpus
        )
        run_id = featurize_ray(store, cfg, options)
        engine = f"ray, {store.run(run_id)['summary'].get('workers')} workers"
    else:
        from core.steps.featurize import featurize

        run_id = featurize(store, cfg)
        engine = "{device} {dtype}".format(**store.run(run_id)["summary"])
    record = store.run(run_id)
    s = record["summary"]
    print(
        f"feature run {run_id}: {s['n_examples']} examples, {s['n_tokens']} tokens, "
        f"{s['n_truncated']} truncated (longer than {record['config']['max_length']} tokens "
        f"or the model's context); {record['config']['hook']}, {engine}"
    )
    return 0


# --- cluster --------------------------------------------------------------------------------------
def _cluster_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument(
        "--k",
        type=int,
        help="number of clusters (default: the sweep's best k, else ~sqrt(n/20))",
    )
    sp.add_argument(
        "--sweep",
        metavar="K,K,...|auto",
        help="score each k by silhouette (cosine, on a sample of at most 3,000 rows) and store "
        "the scores; 'auto' = a small grid bounded by the dataset's size",
    )
    _seed(sp)
    _feature_run(sp)
    sp.add_argument(
        "--baselines",
        default="dense,tfidf",
        metavar="NAMES|none",
        help="also cluster these representations with the same k and store how each compares "
        "(silhouette, NMI/AMI against the dataset's tags): dense (needs featurize --dense), "
        "tfidf; 'none' skips them",
    )


def _cluster(args: argparse.Namespace) -> int:
    from core.clustering import ClusterConfig, parse_sweep
    from core.steps.space import cluster

    store = _store(args)
    sweep = parse_sweep(args.sweep) if args.sweep else None
    run_id = cluster(
        store,
        dataset=args.dataset,
        cfg=ClusterConfig(k=args.k, seed=args.seed, sweep=sweep),
        feature_run=args.feature_run,
        baselines=_names(args.baselines),
    )
    summary = store.run(run_id)["summary"]
    for point in summary.get("sweep", []):
        print(f"k={point['k']:3d}  silhouette {point['silhouette']:.4f}")
    if summary.get("sweep_note"):
        print(f"warning: {summary['sweep_note']}", file=sys.stderr)
    for row in store.clusters(run_id).itertuples():
        print(f"cluster {row.cluster:3d}  {row.size:6d}  {row.label}")
    if "baselines" in summary:
        from core.signals import clustering_table

        print(_table(clustering_table(summary["baselines"])))
    return 0


# --- difficulty, quality --------------------------------------------------------------------------
def _probe_command(spec: SignalSpec) -> Command:
    """A signal's command (difficulty, quality): the same flags, worded from its registry entry."""
    signal, kinds, higher = spec.name, list(spec.kinds), list(spec.directions)

    def add_arguments(sp: argparse.ArgumentParser) -> None:
        _dataset(sp)
        sp.add_argument("--label", required=True, help=spec.label_help)
        sp.add_argument(
            "--kind",
            choices=kinds,
            help=f"probe (default: {kinds[0]}{spec.kind_help}",
        )
        sp.add_argument(
            "--name",
            help="score column name (default: LABEL_proxy); a name a probe of another signal "
            "stored on the dataset is refused. Labelled rows are scored out of fold",
        )
        sp.add_argument(
            "--higher",
            choices=higher,
            help=f"what a higher label means (default: {spec.higher_help}",
        )
        sp.add_argument("--folds", type=int, default=5, help="cross-validation folds")
        _seed(sp)
        sp.add_argument("--min-labels", type=int, default=20, help="fewest labelled examples")
        sp.add_argument(
            "--range", metavar="LO,HI", help="valid label range; a label outside is an error"
        )
        sp.add_argument(
            "--baselines",
            default="dense,tfidf",
            metavar="NAMES|none",
            help="the same probe on these representations, in the same run: dense (needs "
            "featurize --dense), tfidf; 'none' skips them",
        )
        _feature_run(sp)

    return Command(
        help=f"Train the {signal} probe on SAE features, score every example, store the "
        "cross-validated evidence beside the baselines.",
        add_arguments=add_arguments,
        handler=_probe,
        target="core.steps.probes:probe",
    )


def _probe(args: argparse.Namespace) -> int:
    """Train the probe named by the command (difficulty or quality) and print its evidence."""
    from core.steps.probes import ProbeRequest, probe

    store = _store(args)
    req = _from_flags(
        ProbeRequest,
        args,
        signal=args.command,
        higher_is=args.higher,
        value_range=_range(args.range),
        baselines=_names(args.baselines),
    )
    run_id = probe(store, req)
    _print_probe(store.run(run_id), run_id=run_id, signal=args.command)
    return 0


def _print_probe(record: dict[str, Any], *, run_id: int, signal: str) -> None:
    """A probe run: what it learned from, where its scores went, and the evidence table."""
    from core.signals import class_line, evidence_table, score_source

    s = record["summary"]
    if s.get("kind_note"):
        print(f"note: {signal} probe on '{s['label']}': {s['kind_note']}", file=sys.stderr)
    print(
        f"{signal} probe run {run_id}: {s['kind']} on '{s['label']}', "
        f"{s['n_labelled']} labelled of {s['n_examples']}; scores stored as column "
        f"'{record['config']['name']}' ({s['seconds']} s)"
    )
    unscored = s.get("n_unscored") or 0
    print(
        score_source(s)
        + (f" {unscored} labelled rows of skipped folds have no score (NULL)." if unscored else "")
    )
    line = class_line(s)
    if line:
        print(line)
    print(_table(evidence_table(s)))


# --- rollouts -------------------------------------------------------------------------------------
def _rollouts_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "path",
        help="JSONL/JSON/CSV/Parquet: {id, passed} per rollout, {id, passes: [1,0,..]} or "
        "{id, n, n_pass} per prompt, or {id, reward} with --threshold",
    )
    _dataset(sp)
    sp.add_argument("--k", default="1,4,8", metavar="K,K,...", help="pass@k values to compute")
    sp.add_argument("--threshold", type=float, help="reward at or above which a rollout passes")
    sp.add_argument("--id-field", default="id", help="field holding the example id")
    sp.add_argument("--source", help="where the rollouts come from (shown in the app)")


def _rollouts(args: argparse.Namespace) -> int:
    from core.steps.ingest import ingest_rollouts

    try:
        ks = [int(k) for k in _names(args.k)]
    except ValueError as exc:
        raise StudioError(f"--k {args.k!r}: expected whole numbers like 1,4,8") from exc
    s = ingest_rollouts(
        _store(args),
        dataset=args.dataset,
        path=args.path,
        ks=ks,
        threshold=args.threshold,
        id_field=args.id_field,
        source=args.source,
    )
    print(
        f"rollouts: {s['n_rollouts']} for {s['n_prompts']} prompts, mean pass rate "
        f"{s['mean_pass_rate']:.3f}; zero-signal (all pass or all fail) "
        f"{s['zero_signal_share']:.1%} ({s['n_all_pass']} all pass, {s['n_all_fail']} all "
        "fail); labels n_rollouts, pass_rate, pass_at_k, zero_signal"
    )
    return 0


# --- reward, import-rewards, verify ---------------------------------------------------------------
def _reward_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_HUB_ID",
        help="a transformers *ForSequenceClassification reward model (folder or hub id)",
    )
    sp.add_argument(
        "--head",
        required=True,
        choices=["scalar", "ordinal"],
        help="scalar: one logit, the reward (Bradley-Terry); ordinal: WildReward's CORAL head, "
        "K-1 logits, reward = 1 + sum of sigmoid(logit_k), in [1, K]",
    )
    sp.add_argument("--name", help="name of the scores (default: the model's last path part)")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument(
        "--max-length",
        type=int,
        help="tokens per text (default: the model's context); longer texts are truncated, "
        "counted and flagged",
    )
    sp.add_argument(
        "--template",
        metavar="chat|TEMPLATE",
        help="what the model reads: 'chat' (the tokenizer's chat template, the default when it "
        "has one) or a plain template with {prompt} and {response} (default without a chat "
        "template: the prompt, a blank line, the response)",
    )
    sp.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template (file or text) to use instead of the tokenizer's",
    )
    _device_args(sp)
    sp.add_argument("--chunk-size", type=int, default=512, help="responses per commit")
    _resume_arg(sp)


def _reward(args: argparse.Namespace) -> int:
    from core.steps.rewards import RewardScoringConfig, score_rewards

    store = _store(args)
    cfg = _from_flags(RewardScoringConfig, args, resume=not args.no_resume)
    run_id = score_rewards(store, cfg)
    record = store.run(run_id)
    c, s = record["config"], record["summary"]
    head = f"ordinal, K = {c['K']}" if c["head"] == "ordinal" else "scalar"
    template = "chat template" if c["template"] == "chat" else f"template {c['template']!r}"
    print(
        f"reward run {run_id} '{c['name']}': {s['n_scores']} responses of {s['n_examples']} "
        f"examples scored ({head}; {template}); {s['n_truncated']} truncated (longer than "
        f"{c['max_length']} tokens); mean {s['mean']:.4f}, range {s['min']:.4f} .. "
        f"{s['max']:.4f}; {s['device']} {s['dtype']}"
    )
    return 0


def _import_rewards_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "path",
        metavar="FILE",
        help="JSONL/JSON/CSV/Parquet: example_id (or id), response_idx (0 = chosen, 1.. = "
        "rejected; needed for preference sets) and the score column",
    )
    _dataset(sp)
    sp.add_argument("--name", required=True, help="name of the scores")
    sp.add_argument("--column", default="score", help="the field holding the score (score)")


def _import_rewards(args: argparse.Namespace) -> int:
    from core.steps.rewards import import_rewards

    store = _store(args)
    run_id = import_rewards(
        store, args.path, dataset=args.dataset, name=args.name, column=args.column
    )
    n = store.run(run_id)["summary"]["n_scores"]
    print(f"reward run {run_id} '{args.name}': imported {n} scores from {args.path}")
    return 0


def _verify_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument("--name", default="verifier", help="name of the scores (verifier)")


def _verify(args: argparse.Namespace) -> int:
    from core.steps.rewards import verify_dataset

    store = _store(args)
    run_id = verify_dataset(store, dataset=args.dataset, name=args.name)
    s = store.run(run_id)["summary"]
    print(
        f"reward run {run_id} '{args.name}': {s['n']} responses verified, mean "
        f"{s['mean']:.3f} ({', '.join(f'{k}: {v}' for k, v in s['by_method'].items())})"
    )
    return 0


# --- judge ----------------------------------------------------------------------------------------
def _judge_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument("--names", help="comma-separated reward names (default: all)")
    sp.add_argument(
        "--by",
        action="append",
        metavar="COLUMN",
        help="pairwise and 1-of-N accuracy per value of a label, a tag, 'cluster' (the latest "
        "cluster run) or 'response_cluster' (each response's cluster in DATASET.responses; "
        "with --side chosen or rejected); repeat it or give a comma list",
    )
    sp.add_argument(
        "--side",
        choices=["example", "chosen", "rejected"],
        default="example",
        help="with --by: whose value groups a pair: the example's, the chosen or the "
        "rejected response's (no 1-of-N per rejected response)",
    )
    sp.add_argument(
        "--margins",
        metavar="M,M,...",
        help="accuracy keeping only pairs whose score margin exceeds each m, e.g. 0,0.5,1 "
        "(in each source's own units)",
    )
    sp.add_argument(
        "--calibration",
        metavar="LABEL",
        help="ECE and reliability table of every ordinal reward model against a feedback label "
        "(integers 1..K; a chat's response or a preference set's chosen response)",
    )
    sp.add_argument("--bins", type=int, default=10, help="confidence bins for --calibration")
    sp.add_argument("--json", action="store_true", help="print the results as JSON instead")


def _margins(text: str | None) -> list[float] | None:
    """--margins '0,0.5,1' -> [0.0, 0.5, 1.0] (None without the flag)."""
    if text is None:
        return None
    try:
        return [float(m) for m in _names(text)]
    except ValueError as exc:
        raise StudioError(f"--margins {text!r}: expected numbers like 0,0.5,1") from exc


def _judge(args: argparse.Namespace) -> int:
    from core.reward_models import judge_report
    from core.steps.judge import JudgeRequest, judge

    req = _from_flags(
        JudgeRequest,
        args,
        names=_names(args.names) or None,
        by=[c for item in args.by or () for c in _names(item)],
        margins=_margins(args.margins),
        calibration_label=args.calibration,
        n_bins=args.bins,
    )
    judged = judge(_store(args), req)
    if args.json:
        print(json.dumps(judged, indent=2, allow_nan=False))
    else:
        print("\n".join(judge_report(judged)))
    return 0


# --- responses, reward-probe, preference-features, disagree ---------------------------------------
def _responses_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp, "a preference set")
    sp.add_argument("--replace", action="store_true", help="rebuild it if it exists")


def _responses(args: argparse.Namespace) -> int:
    from core.steps.rewards import (
        responses_dataset,
    )

    store = _store(args)
    name = responses_dataset(store, dataset=args.dataset, replace=args.replace)
    n = store.dataset(name)["n_examples"]
    print(
        f"dataset '{name}': {n} responses of '{args.dataset}' (featurize it with "
        "--pool-over response)"
    )
    return 0


def _reward_probe_args(sp: argparse.ArgumentParser) -> None:
    _responses_set(sp)
    sp.add_argument("--features", choices=["sae", "dense"], default="sae")
    sp.add_argument("--name", help="name of the scores (default bt-probe-FEATURES)")
    _feature_run(sp, "feature run of DATASET.responses")
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--penalty", choices=["auto", "l2", "l1"], default="auto")
    _seed(sp)


def _reward_probe(args: argparse.Namespace) -> int:
    from core.steps.rewards import RewardProbeConfig, reward_probe

    store = _store(args)
    cfg = _from_flags(RewardProbeConfig, args)
    run_id = reward_probe(store, cfg)
    _print_reward_probe(store.run(run_id), run_id=run_id)
    return 0


def _print_reward_probe(record: dict[str, Any], *, run_id: int) -> None:
    """A reward-probe run: its out-of-fold accuracy and its largest weights."""
    c, s = record["config"], record["summary"]
    a = s["pairwise_oof"]
    print(
        f"reward run {run_id} '{c['name']}': Bradley-Terry probe on {c['features']} features "
        f"of {c['responses_dataset']} (feature run {c['feature_run']}); out-of-fold pairwise "
        f"accuracy {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] over "
        f"{s['n_pairs']} pairs of {s['n_prompts']} prompts; {s['penalty']} penalty, "
        f"C {s['C']:g}, {s['n_nonzero']} nonzero weights"
    )
    if not s["n_nonzero"]:
        print(
            "  every weight is zero: the strongest penalty validated best, so these features "
            "carry no chosen-vs-rejected signal the probe could confirm (all pairs are ties)"
        )
    prefix = "f" if c["features"] == "sae" else "dim "
    for w in s["top_weights"][:10]:
        label = f"  {w['label']}" if w["label"] else ""
        print(f"  {prefix}{w['feature']}: {w['weight']:+.4f}{label}")


def _preference_features_args(sp: argparse.ArgumentParser) -> None:
    _responses_set(sp)
    sp.add_argument("--top", type=int, default=20, help="features to print")
    _feature_run(sp, "feature run of DATASET.responses")


def _preference_features(args: argparse.Namespace) -> int:
    from core.steps.rewards import (
        preference_shift,
    )

    shift = preference_shift(
        _store(args), dataset=args.dataset, feature_run=args.feature_run, top=args.top
    )
    print(
        f"{'feature':<9}{'chosen-rejected':>16}{'fires chosen/rejected':>23}"
        f"{'pairs up/down':>15}{'sign p':>9}{'q (BH)':>8}  label"
    )
    for r in shift.sort_values("mean_diff", ascending=False).itertuples():
        fires = f"{r.fire_chosen:.2f}/{r.fire_rejected:.2f}"
        print(
            f"{'f' + str(r.feature_id):<9}{r.mean_diff:>+16.4f}{fires:>23}"
            f"{f'{r.n_pos}/{r.n_neg}':>15}{r.sign_p:>9.2g}{r.sign_q:>8.2g}  {r.label}"
        )
    return 0


def _disagree_args(sp: argparse.ArgumentParser) -> None:
    _responses_set(sp)
    sp.add_argument("--a", required=True, help="a reward name")
    sp.add_argument("--b", required=True, help="another reward name")
    sp.add_argument("--top", type=int, default=10, help="responses and features to print")
    _seed(sp)


def _disagree(args: argparse.Namespace) -> int:
    from core.steps.rewards import (
        disagreement_probe,
    )

    d = disagreement_probe(_store(args), dataset=args.dataset, a=args.a, b=args.b, seed=args.seed)
    r2 = d.metrics.get("r2")
    rho = d.metrics.get("spearman")
    print(
        f"{len(d.table)} responses scored by both; rank_diff = rank under {args.a} - rank "
        f"under {args.b} (ranks in [0, 1])"
    )
    for r in d.table.head(args.top).itertuples():
        text = " ".join(str(r.response or "").split())[:80]
        print(f"  {r.example_id} #{r.response_idx}: {r.rank_diff:+.3f}  {text}")
    print(
        f"sparse probe of rank_diff on SAE features: out-of-fold R2 (prompts held out) "
        f"{'n/a' if r2 is None else f'{r2:.3f}'}, Spearman "
        f"{'n/a' if rho is None else f'{rho:.3f}'}; {d.params.get('n_nonzero', 0)} nonzero "
        f"weights, the {min(args.top, len(d.weights))} largest:"
    )
    for w in d.weights.head(args.top).itertuples():
        print(f"  f{w.feature_id}: {w.weight:+.4f}  {w.label}")
    return 0


# --- dedup, project -------------------------------------------------------------------------------
def _dedup_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument(
        "--threshold", type=float, default=0.95, help="cosine at or above which two are copies"
    )
    _feature_run(sp)


def _dedup(args: argparse.Namespace) -> int:
    from core.steps.space import dedup

    store = _store(args)
    run_id = dedup(
        store, dataset=args.dataset, threshold=args.threshold, feature_run=args.feature_run
    )
    s = store.run(run_id)["summary"]
    print(
        f"dedup run {run_id}: {s['n_groups']} groups of near-duplicates, "
        f"{s['n_duplicates']} extra copies (drop them with --where is_duplicate=0)"
    )
    return 0


def _project_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    sp.add_argument("--n-neighbors", type=int, default=15)
    sp.add_argument("--min-dist", type=float, default=0.1)
    _seed(sp)
    _feature_run(sp)


def _project(args: argparse.Namespace) -> int:
    from core.projection import ProjectConfig
    from core.steps.space import project

    store = _store(args)
    run_id = project(
        store,
        dataset=args.dataset,
        cfg=ProjectConfig(n_neighbors=args.n_neighbors, min_dist=args.min_dist, seed=args.seed),
        feature_run=args.feature_run,
    )
    print(f"projection run {run_id}: {store.run(run_id)['summary']['n']} points")
    return 0


# --- export ---------------------------------------------------------------------------------------
def _export_args(sp: argparse.ArgumentParser) -> None:
    _dataset(sp)
    _export_selection_args(sp)
    _export_order_args(sp)
    _export_layout_args(sp)
    sp.add_argument(
        "--out",
        required=True,
        help="output file (an hf folder for --to hf); beside it: OUT.manifest.json, for verl "
        "OUT.reward.py (the reward function), with --ids OUT.ids.txt",
    )
    sp.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="cap on DuckDB's memory while exporting (default 1024); raise it if a very large "
        "export reports DuckDB running out of memory",
    )


def _export_selection_args(sp: argparse.ArgumentParser) -> None:
    """Which rows an export keeps: --where, --drop, --ids, --rules."""
    sp.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep the rows where EXPR holds, repeatable (ANDed): 'quality>=0.5', "
        "'cluster in 1,3', 'task=leg_counting', 'feature:1234>0.5' (an SAE feature's activation)",
    )
    sp.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="EXPR",
        help="drop the rows where EXPR holds (a missing value keeps the row), repeatable: "
        "'is_duplicate=1', 'cluster in 3,5', 'feature:1234>0.5'",
    )
    _ids_file(sp, "keep only the example ids listed in FILE (one per line), e.g. a map selection")
    sp.add_argument(
        "--rules",
        metavar="FILE",
        help="a rule set (JSON, see `rules`): its rules are ANDed with --where and --ids",
    )


def _export_order_args(sp: argparse.ArgumentParser) -> None:
    """In which order an export writes its rows: --order, batches, --difficulty-column, --seed."""
    sp.add_argument(
        "--order",
        choices=EXPORT_ORDERS,
        default="none",
        help="curriculum (SAERL): easy-to-hard within each cluster, clusters interleaved; "
        "easy-to-hard: the whole set by difficulty; random: seeded shuffle; none: as ingested",
    )
    sp.add_argument(
        "--batch-size",
        type=int,
        help="write cluster-first batches of this size (the trainer's batch size): each batch "
        "takes one cluster's next rows, --mix of its slots from the nearest clusters",
    )
    sp.add_argument(
        "--mix",
        type=float,
        default=DEFAULT_MIX,
        help="share of each batch from other clusters: 0 = pure-cluster batches, 1 = a plain "
        f"shuffle (default {DEFAULT_MIX}, SAERL's moderate mixing)",
    )
    sp.add_argument(
        "--difficulty-column",
        help="column that orders and bands by difficulty (default: the label 'difficulty', "
        "else a difficulty probe's score, else a pass rate, where higher = easier)",
    )
    _seed(sp)


def _export_layout_args(sp: argparse.ArgumentParser) -> None:
    """How an export writes its rows: --format, --to, --responses, the trainer's length cap."""
    sp.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="jsonl",
        help="jsonl / parquet / hf: every column; verl: RL Parquet with data_source, prompt "
        "(chat messages), ability, reward_model {style: rule, ground_truth}, extra_info; "
        "trl-prompt, trl-preference, trl-messages: TRL's layouts",
    )
    sp.add_argument(
        "--to",
        choices=["jsonl", "parquet", "hf"],
        help="the container (default: the output's suffix, else the format's own)",
    )
    sp.add_argument(
        "--responses",
        choices=["chosen", "all"],
        default="chosen",
        help="trl-messages of a responses dataset (SFT): the chosen responses only, or all of "
        "them, rejected ones included (default chosen)",
    )
    sp.add_argument(
        "--tokenizer",
        metavar="PATH_OR_ID",
        help="with --max-length: the trainer's tokenizer; rows longer than --max-length tokens "
        "as the trainer measures them are dropped before ordering and batching (so batches "
        "stay whole) and listed in the manifest",
    )
    sp.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="the trainer's max_length (verl: data.max_prompt_length); needs --tokenizer",
    )


def _checked_ids(store: Store, args: argparse.Namespace) -> list[str] | None:
    """The ids of --ids FILE, with a warning for those the dataset lacks."""
    from core.steps.export import check_ids

    ids = _read_ids(args.ids)
    if ids is not None:
        source = f"--ids {args.ids}"
        warn(check_ids(store, dataset=args.dataset, ids=ids, source=source))
    return ids


def _loaded_rules(store: Store, path: str, dataset: str) -> tuple[Any, Any]:
    """The rule set in ``path`` checked against the dataset (its warnings on stderr), and the
    dataset's views it was checked on."""
    from core.rules import load_rule_set
    from core.steps.rules import check_on_store

    rule_set = load_rule_set(path)
    store.dataset(dataset)
    views = store.views(dataset)
    warn(check_on_store(store, dataset, rule_set, views=views))
    return rule_set, views


def _export_config(args: argparse.Namespace) -> Any:
    """The ExportConfig the flags ask for."""
    from core.export import ExportConfig

    return ExportConfig(
        order=args.order,
        fmt=args.format,
        container=args.to,
        seed=args.seed,
        difficulty_column=args.difficulty_column,
        batch_size=args.batch_size,
        mix=args.mix,
        responses=args.responses,
        # a local folder by absolute path, so the manifest's command runs anywhere
        tokenizer=str(Path(args.tokenizer).absolute())
        if args.tokenizer and Path(args.tokenizer).exists()
        else args.tokenizer,
        max_length=args.max_length,
    )


def _export(args: argparse.Namespace) -> int:
    from core.filters import parse_rule_where
    from core.steps.export import ExportRequest, export

    store = _store(args)
    filters = [parse_rule_where(w) for w in args.where]
    filters += [replace(parse_rule_where(w), action="drop") for w in args.drop]
    ids = _checked_ids(store, args)
    rule_set = _loaded_rules(store, args.rules, args.dataset)[0] if args.rules else None
    request = ExportRequest(
        dataset=args.dataset,
        filters=tuple(filters),
        ids=None if ids is None else tuple(ids),
        rule_set=rule_set,
        rules_path=str(Path(args.rules).absolute()) if args.rules else None,
    )
    m = export(store, request, _export_config(args), out=args.out, memory_mb=args.memory_mb)
    _print_export(m, out=args.out)
    return 0


# --- rules ----------------------------------------------------------------------------------------
def _rules_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", metavar="FILE", help="the rule set (JSON)")
    _dataset(sp)
    _ids_file(sp, "also keep only the example ids listed in FILE (one per line)")
    sp.add_argument(
        "--difficulty-column",
        help="column the bands are made of (default: the label 'difficulty', else a difficulty "
        "probe's score, else a pass rate)",
    )
    sp.add_argument(
        "--show", type=int, default=10, metavar="N", help="print N removed rows and why"
    )


def _rules(args: argparse.Namespace) -> int:
    from core.rules import intersect_ids
    from core.steps.rules import RemovedViewRequest, removed_view

    store = _store(args)
    rule_set, views = _loaded_rules(store, args.path, args.dataset)
    listed = _checked_ids(store, args)
    ids = intersect_ids(rule_set.ids(), listed)
    names = rule_set.hit_names()
    if ids is not None and rule_set.ids() is None:
        names.append("selection")
    req = RemovedViewRequest(
        args.dataset,
        views=views,
        filters=rule_set.filters(),
        ids=ids,
        names=names,
        difficulty=args.difficulty_column,
        columns=["prompt"],
    )
    removal = removed_view(store, req)
    _print_report(removal, rule_set=rule_set, path=args.path, dataset=args.dataset, show=args.show)
    return 0


# --- demo, import-descriptions, info, doctor ------------------------------------------------------
def _demo_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--n", type=int, default=3000, help="number of prompts")
    _seed(sp)
    sp.add_argument(
        "--if-missing", action="store_true", help="do nothing when the database already exists"
    )


def _demo(args: argparse.Namespace) -> int:
    if args.if_missing and Path(args.db).exists():
        print(f"{args.db} exists; skipping the demo build")
        return 0
    from core.steps.demo import build_demo

    path = build_demo(args.db, n=args.n, seed=args.seed)
    print(f"built the demo database {path}")
    return 0


def _import_descriptions_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("path", help='JSON: [{index, description}, ...] or {"123": "desc"}')
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", help="use the dataset's latest feature run")
    g.add_argument("--run", type=int, help="feature run id")


def _import_descriptions(args: argparse.Namespace) -> int:
    from core.steps.ingest import import_descriptions

    n = import_descriptions(_store(args), run_id=args.run, dataset=args.dataset, path=args.path)
    print(f"imported {n} feature descriptions from {args.path}")
    return 0


def _no_arguments(sp: argparse.ArgumentParser) -> None:
    """A command with no flag of its own (only --db)."""


def _info(args: argparse.Namespace) -> int:
    store = _store(args)
    print(store.list_datasets().to_string(index=False))
    for rec in store.list_runs().to_dict("records"):
        print(
            f"run {rec['run_id']:4d} {rec['step']:10s} {rec['dataset']:12s} "
            f"{rec['status']:8s} {json.dumps(rec['config'])[:100]}"
        )
    return 0


def _doctor_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--export-dir",
        help="the app's export folder, whose manifests are checked too (default: "
        f"$SAERL_EXPORT_DIR, else {DEFAULT_EXPORT_DIR})",
    )
    sp.add_argument(
        "--sae-dir",
        default=DEFAULT_SAE_DIR,
        help="the folder train-sae writes SAEs to without --out",
    )
    sp.add_argument(
        "--sweep",
        action="store_true",
        help="remove the leftover temp files of killed exports and SAE trainings it finds",
    )


def _doctor(args: argparse.Namespace) -> int:
    from core.steps.doctor import diagnose

    findings = diagnose(args.db, export_dir=args.export_dir, sae_dir=args.sae_dir, sweep=args.sweep)
    for finding in findings:
        print(finding.line())
    problems = sum(f.level == "problem" for f in findings)
    print(f"{problems} problem{'s' if problems != 1 else ''} found in {args.db}")
    return 1 if problems else 0


# --- the table ------------------------------------------------------------------------------------
# In the order `python -m core --help` lists them.
COMMANDS: dict[str, Command] = {
    "ingest": Command(
        "Load a JSONL/JSON/Parquet/CSV file or a save_to_disk folder as a dataset.",
        _ingest_args,
        _ingest,
        "core.steps.ingest:ingest",
    ),
    "train-sae": Command(
        "Train a TopK SAE (sae-lens) on a dataset's activations at one layer.",
        _train_sae_args,
        _train_sae,
        "core.steps.featurize:train_sae",
    ),
    "featurize": Command(
        "SAE features for every example (top-k per example, resumable).",
        _featurize_args,
        _featurize,
        "core.steps.featurize:featurize",
        also=(("core.steps.featurize_ray:featurize_ray", "with --ray"),),
    ),
    "cluster": Command(
        "k-means on L2-normalised SAE vectors, clusters labelled by features.",
        _cluster_args,
        _cluster,
        "core.steps.space:cluster",
    ),
    **{name: _probe_command(spec) for name, spec in SIGNAL_REGISTRY.items()},
    "rollouts": Command(
        "Ingest rollout results (n samples per prompt, pass/fail): pass_rate, pass_at_k, "
        "zero_signal become labels.",
        _rollouts_args,
        _rollouts,
        "core.steps.ingest:ingest_rollouts",
    ),
    "reward": Command(
        "Score every response of a preference set (or each chat's last assistant turn) with a "
        "reward model; resumable.",
        _reward_args,
        _reward,
        "core.steps.rewards:score_rewards",
    ),
    "import-rewards": Command(
        "Import precomputed reward scores (e.g. from your own RM server) as a named reward.",
        _import_rewards_args,
        _import_rewards,
        "core.steps.rewards:import_rewards",
    ),
    "judge": Command(
        "Judge a preference set's reward sources (pairwise and 1-of-N accuracy) and compare "
        "every two (rank correlation, pair and best-of-n agreement).",
        _judge_args,
        _judge,
        "core.steps.judge:judge",
    ),
    "verify": Command(
        "Score every response against its example's answer (reasoning-gym's checker where the "
        "task is one of its tasks, else a normalised match) and store it as a named reward.",
        _verify_args,
        _verify,
        "core.steps.rewards:verify_dataset",
    ),
    "responses": Command(
        "Derive DATASET.responses from a preference set: one example per chosen or rejected "
        "response, to featurize (--pool-over response), cluster and map.",
        _responses_args,
        _responses,
        "core.steps.rewards:responses_dataset",
    ),
    "reward-probe": Command(
        "Train a Bradley-Terry reward probe on the SAE features (or dense baseline) of chosen "
        "vs rejected responses; stored as a reward, scored out of fold.",
        _reward_probe_args,
        _reward_probe,
        "core.steps.rewards:reward_probe",
    ),
    "preference-features": Command(
        "SAE features ranked by how much more they fire in chosen than in rejected responses.",
        _preference_features_args,
        _preference_features,
        "core.steps.rewards:preference_shift",
    ),
    "disagree": Command(
        "Where two reward sources disagree most, and the SAE features that predict it "
        "(a sparse probe).",
        _disagree_args,
        _disagree,
        "core.steps.rewards:disagreement_probe",
    ),
    "dedup": Command(
        "Group near-duplicate examples (cosine of SAE vectors >= threshold).",
        _dedup_args,
        _dedup,
        "core.steps.space:dedup",
    ),
    "project": Command(
        "UMAP of the SAE vectors to 2-D, for the Map.",
        _project_args,
        _project,
        "core.steps.space:project",
    ),
    "export": Command(
        "Write the filtered, ordered rows with a manifest beside them.",
        _export_args,
        _export,
        "core.steps.export:export",
    ),
    "rules": Command(
        "Show what a rule set removes from a dataset: rows per rule (on its own, first, only "
        "this rule), and what remains per cluster and per difficulty band.",
        _rules_args,
        _rules,
        "core.steps.rules:removed_view",
    ),
    "demo": Command(
        "Build the demo database from scratch (offline, a few minutes).",
        _demo_args,
        _demo,
        "core.steps.demo:build_demo",
        db_default=DEMO_DB,
    ),
    "import-descriptions": Command(
        "Import feature descriptions (a Neuronpedia-style JSON export) for a feature run.",
        _import_descriptions_args,
        _import_descriptions,
        "core.steps.ingest:import_descriptions",
    ),
    "info": Command(
        "Print the datasets and runs in a database.",
        _no_arguments,
        _info,
        "core.store:Store.list_datasets",
        also=(("core.store:Store.list_runs", ""),),
    ),
    "doctor": Command(
        "Check a store and the files it points at (schema, orphan rows, unfinished runs, SAE "
        "folders, export manifests, leftover temp files) and say what to do; exit 1 on a problem.",
        _doctor_args,
        _doctor,
        "core.steps.doctor:diagnose",
    ),
}


def commands_table() -> str:
    """README's "Where each command lives": command -> the core function its handler calls.

    Generated here so README cannot drift from COMMANDS (tests/cli/test_readme.py diffs them)::

        | `ingest` | `core.steps:ingest` |
    """
    lines = ["| command | module:function it calls |", "|---|---|"]
    for name, command in COMMANDS.items():
        calls = [f"`{command.target}`"]
        calls += [
            f"`{target}` ({when})" if when else f"`{target}`" for target, when in command.also
        ]
        lines.append(f"| `{name}` | {'; '.join(calls)} |")
    return "\n".join(lines)


# --- the parser -----------------------------------------------------------------------------------
class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help already says it), so a default
    that cuts data (--max-length, --top-k ...) is never hidden; None and off flags show none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
            or isinstance(action.default, list)
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give options without a help text one that shows their default (argparse prints nothing
    for an option whose help is None)."""
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default not in (None, False):
            action.help = "(default: %(default)s)"
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI: one subparser per entry of COMMANDS, each with --db and its own flags."""
    p = argparse.ArgumentParser(
        formatter_class=_HelpFormatter,
        prog="python -m core",
        description="SAERL Studio pipeline: ingest, train-sae, featurize, cluster, dedup, "
        "project, reward, import-rewards, rules, export, demo.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sp = sub.add_parser(
            name, help=command.help, description=command.help, formatter_class=_HelpFormatter
        )
        sp.add_argument(
            "--db", default=command.db_default, help=f"DuckDB file (default {command.db_default})"
        )
        command.add_arguments(sp)
    _show_defaults(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command to its handler (handlers import core lazily)."""
    return COMMANDS[args.command].handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except StudioError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: committed work is kept; rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
