"""verl's RL layout, as its ``RLHFDataset`` reads it (Parquet or JSON Lines) for GRPO/DAPO runs of
``verl.trainer.main_ppo``: ``data_source``, ``prompt`` (chat messages), ``ability`` (the task,
else "general"), ``reward_model`` {style: "rule", ground_truth}, ``extra_info`` {index (the
position), id, cluster, batch, every numeric label and score, every tag and extra field}.
The export ships the studio's verifier as verl's custom reward function (OUT.reward.py).

Checked against verl 0.9.1's source and run by tests/e2e/test_trainers.py: create_rl_sampler
(verl/trainer/ppo/utils.py) gives a SequentialSampler when data.shuffle is false, under a
StatefulDataLoader of data.train_batch_size with drop_last.

    >>> t = pa.table({"id": ["a"], "prompt": ["2+2?"], "answer": ["4"]})
    >>> rows(t, kind="prompts", data_source="d").column_names
    ['data_source', 'prompt', 'ability', 'reward_model', 'extra_info']
"""

from __future__ import annotations

import shlex
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from core.errors import StudioError
from core.export.layouts.base import INTERNAL, RESPONSES, Layout, RecipeArgs, column
from core.export.layouts.messages import prompt_messages
from core.export.lengths import PROMPT_TOKENS, prompt_lengths

VERL_VERSION = "0.9.1"  # the version the recipe was checked against (requirements-verl.txt)
REWARD_FUNCTION = "compute_score"  # core.answers' verl entry point
# verl modes that re-batch what the sampler gives, so a step no longer sees one export batch
VERL_REBATCHING = (
    "these re-batch, so a step no longer takes one export batch (the order of prompts still "
    "holds): algorithm.filter_groups.enable=True (DAPO's dynamic sampling drops groups whose "
    "rewards are all equal and refills from later prompts), "
    "trainer.v1.sampler.sync_refill_failed_groups=True, "
    "trainer.v1.trainer_mode=colocate_async|separate_async (async rollouts mix steps), "
    "data.gen_batch_size different from data.train_batch_size, data.train_max_samples > 0 and "
    "data.filter_overlong_prompts=True"
)


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    """A chunk in verl's layout (see the module doc)."""
    n = chunk.num_rows
    names = chunk.column_names
    task = (
        pc.fill_null(column(chunk, "task").cast(pa.string()), "general")
        if "task" in names
        else pa.repeat(pa.scalar("general"), n)
    )
    answer = column(chunk, "answer").cast(pa.string()) if "answer" in names else pa.nulls(n)
    info = extra_info(chunk)
    return pa.table(
        {
            "data_source": pa.repeat(pa.scalar(data_source, pa.string()), n),
            "prompt": prompt_messages(chunk, kind),
            "ability": task,
            "reward_model": pa.StructArray.from_arrays(
                [pa.repeat(pa.scalar("rule"), n), answer.cast(pa.string())],
                names=["style", "ground_truth"],
            ),
            "extra_info": pa.StructArray.from_arrays(list(info.values()), names=list(info)),
        }
    )


def extra_info(chunk: pa.Table) -> dict[str, pa.Array]:
    """``extra_info``'s fields: index (the row's place in the file; without one, its ingest
    index, for a chunk alone has no place), id, cluster, batch, then what a reward function may
    need: every label and score (as float), every tag (task among them) and every field kept
    in extra (JSON text, e.g. reasoning-gym's metadata)."""
    n = chunk.num_rows
    names = chunk.column_names
    where = next((c for c in ("position", "idx") if c in names), None)
    index = column(chunk, where) if where else pa.nulls(n, pa.int64())
    info = {"index": index.cast(pa.int64()), "id": column(chunk, "id").cast(pa.string())}
    info["cluster"] = (
        column(chunk, "cluster").cast(pa.int64()) if "cluster" in names else pa.nulls(n, pa.int64())
    )
    if "batch" in names:
        info["batch"] = column(chunk, "batch").cast(pa.int64())
    skip = {"id", "cluster", "batch", "prompt", "answer", *INTERNAL, *RESPONSES}
    for field in chunk.schema:
        if field.name in skip:
            continue
        if field.name in info:
            raise StudioError(
                f"--format verl: the column {field.name!r} would overwrite "
                f"extra_info.{field.name}; rename it (ingest --map)"
            )
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        info[field.name] = column(chunk, field.name).cast(
            pa.float64()
            if numeric
            else field.type
            if pa.types.is_boolean(field.type)
            else pa.string()
        )
    return info


def recipe(args: RecipeArgs) -> dict[str, Any]:
    """The overrides and a command that start a GRPO run reading the export in its order and
    batches, with the reward function beside the data."""
    batch = args.batch_size
    overrides = [
        f"data.train_files={args.out}",
        f"data.val_files={args.out}",
        "data.shuffle=False",
        f"data.train_batch_size={batch or 'B'}",
        "data.filter_overlong_prompts=False",
        f"reward.custom_reward_function.path={args.reward_file}",
        f"reward.custom_reward_function.name={REWARD_FUNCTION}",
    ]
    if args.max_length is not None:
        overrides.insert(4, f"data.max_prompt_length={args.max_length}")
    command = " ".join(
        [
            "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo",
            *(shlex.quote(o) for o in overrides),
            "data.max_response_length=1024",
            "actor_rollout_ref.model.path=MODEL actor_rollout_ref.rollout.name=vllm",
            "actor_rollout_ref.rollout.n=4",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={batch or 'B'}",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
            "trainer.n_gpus_per_node=1 trainer.nnodes=1 'trainer.logger=[\"console\"]'",
            "trainer.total_epochs=1",
        ]
    )
    return {
        "trainer": f"verl {VERL_VERSION} (python3 -m verl.trainer.main_ppo)",
        "reward_function": {
            "path": str(args.reward_file),
            "name": REWARD_FUNCTION,
            "scores": "the studio's verifier: reasoning-gym's score_answer when "
            "extra_info.task is one of its tasks (with extra_info.metadata), else the "
            "normalised match against reward_model.ground_truth",
        },
        "overrides": overrides,
        "command": command,
        "placeholders": "MODEL: the model's path or hub id; the rollout, micro-batch and "
        "GPU settings are an example for one GPU",
        "batches": "each training step takes one export batch (its members; verl orders "
        "them by length within the step)"
        if batch
        else "no --batch-size: set data.train_batch_size to your batch",
        "rebatching": VERL_REBATCHING,
        "last_batch": f"{args.n_rows % batch} rows of an incomplete last batch are dropped "
        "(verl's dataloader drop_last)"
        if batch and args.n_rows % batch
        else None,
    }


VERL = Layout(
    name="verl",
    summary="verl's RL Parquet",
    rows=rows,
    keep_order="data.shuffle=False (verl then uses a SequentialSampler) and "
    "data.train_batch_size equal to the batch size above, so each step takes one export batch "
    "(verl orders the rows inside a step by length: the batch's members are kept, not their "
    "order within it); leave data.gen_batch_size, data.train_max_samples and "
    "algorithm.filter_groups (DAPO) unset and data.filter_overlong_prompts=False (a dropped row "
    "shifts every later batch: use --tokenizer/--max-length instead); the last incomplete batch "
    "is dropped. Point reward.custom_reward_function.path at OUT.reward.py (the studio's "
    "verifier)",
    container="parquet",
    # what RLHFDataset reads (verl/utils/dataset/rl_dataset.py: .parquet, .json, .jsonl)
    containers=("parquet", "jsonl"),
    containers_why="verl's RLHFDataset reads .parquet, .json and .jsonl files, not "
    "save_to_disk folders; use a .parquet or .jsonl path",
    trainers=("verl",),
    reward_file=True,
    length_rule=PROMPT_TOKENS + ", as verl's filter_overlong_prompts compares with "
    "data.max_prompt_length",
    lengths=prompt_lengths,
    recipe=recipe,
)
