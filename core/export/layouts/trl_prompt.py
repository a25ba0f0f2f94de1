"""TRL's conversational prompt-only layout (GRPOTrainer, RLOOTrainer): ``prompt`` as messages
(a chat's turns up to its last user turn), every other column beside it (GRPO hands the extra
columns to reward functions, so the studio's verifier reads the answer, task and metadata
there). Any dataset kind fills it.

    >>> t = pa.table({"id": ["a"], "prompt": ["2+2?"], "answer": ["4"]})
    >>> rows(t, kind="prompts", data_source="d").to_pylist()
    [{'prompt': [{'role': 'user', 'content': '2+2?'}], 'id': 'a', 'answer': '4'}]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from core.export.layouts.base import RESPONSES, Layout, RecipeArgs, beside
from core.export.layouts.messages import prompt_messages
from core.export.layouts.trl_shared import trl_recipe
from core.export.lengths import PROMPT_TOKENS, prompt_lengths

NAME = "trl-prompt"
TRAINERS = (("GRPOTrainer", "GRPOConfig"), ("RLOOTrainer", "RLOOConfig"))
GRPO_GENERATIONS = 4  # completions per prompt in the GRPO recipe (any number works: it scales)
# column names GRPO/RLOO read as their own (_calculate_rewards, is_conversational): a label or
# tag of that name beside the prompt would change what the trainer does
TRAINER_NAMES = (
    "completion",
    "completions",
    "completion_ids",
    "prompts",
    "trainer_state",
    "log_extra",
    "log_metric",
    "environments",
    "image",
    "images",
)


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    """The prompt as messages, then every other column but the responses."""
    kept = beside(chunk, layout=NAME, reserved=TRAINER_NAMES, drop=("prompt", *RESPONSES))
    return pa.table({"prompt": prompt_messages(chunk, kind), **kept})


def recipe(args: RecipeArgs) -> dict[str, Any]:
    """GRPOConfig that reads one export batch per generation batch, in order (one device:
    per_device_train_batch_size x steps_per_generation == generation_batch_size)."""
    batch = args.batch_size
    config: dict[str, Any] = {
        "shuffle_dataset": False,
        "num_generations": GRPO_GENERATIONS,
        "generation_batch_size": batch * GRPO_GENERATIONS if batch else "B * G",
        "per_device_train_batch_size": GRPO_GENERATIONS,
        "remove_unused_columns": False,
    }
    note = (
        f"a generation batch is generation_batch_size // num_generations = {batch or 'B'} "
        "consecutive prompts: one export batch (one device shown; with more, keep "
        "generation_batch_size)"
    )
    return trl_recipe(args, trainers=TRAINERS, config=config, note=note)


TRL_PROMPT = Layout(
    name=NAME,
    summary="GRPO/RLOO prompts",
    rows=rows,
    keep_order="GRPOConfig/RLOOConfig(shuffle_dataset=False) and generation_batch_size = "
    "batch size x num_generations: a generation batch is then generation_batch_size // "
    "num_generations consecutive prompts, one export batch (an incomplete last one is "
    "dropped); keep remove_unused_columns=False (the default) so reward functions get the "
    "other columns",
    trainers=tuple(trainer for trainer, _ in TRAINERS),
    reward_file=True,
    length_rule=PROMPT_TOKENS + ", as GRPOTrainer/RLOOTrainer tokenize prompts",
    lengths=prompt_lengths,
    recipe=recipe,
)
