"""TRL's conversational preference layout (DPOTrainer, RewardTrainer): ``prompt``, ``chosen``,
``rejected`` as messages, one row per (chosen, rejected) pair in order (``rejected_idx`` says
which); a prompt with no rejected response writes no row. The export orders and batches these
pair rows, the trainer's rows. Preference datasets only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.export.layouts.base import RESPONSES, Layout, RecipeArgs, beside, column
from core.export.layouts.messages import messages
from core.export.layouts.trl_shared import TRL_SEQUENTIAL, sequential_config, trl_recipe
from core.export.lengths import chat_lengths

NAME = "trl-preference"
TRAINERS = (("DPOTrainer", "DPOConfig"), ("RewardTrainer", "RewardConfig"))
# column names the DPO and Reward tokenizers read as their own (images, tools, templates)
TRAINER_NAMES = ("completion", "image", "images", "tools", "chat_template_kwargs")
UNIT = "(chosen, rejected) pair rows"


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    """One row per (chosen, rejected) pair. With a ``rejected_idx`` column (the export planned
    and batched the pair rows, :meth:`core.store.Store.export_chunks`), each row already is the
    pair it names and ``rejected`` its text; without one, each prompt's row (``rejected`` a list)
    expands into one row per rejected response, in order."""
    rejected = column(chunk, "rejected")
    if "rejected_idx" in chunk.column_names:
        which = column(chunk, "rejected_idx").to_numpy(zero_copy_only=False).astype(np.int64)
        base, picked = chunk.drop_columns(["rejected_idx"]), rejected
    else:
        counts = pc.fill_null(pc.list_value_length(rejected), 0).to_numpy(zero_copy_only=False)
        counts = counts.astype(np.int64)
        owner = np.repeat(np.arange(chunk.num_rows), counts)
        which = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        base = chunk.take(pa.array(owner, pa.int64()))
        picked = pc.list_flatten(rejected)
    out = {
        "prompt": messages("user", column(base, "prompt")),
        "chosen": messages("assistant", column(base, "chosen")),
        "rejected": messages("assistant", picked),
        "rejected_idx": pa.array(which, pa.int64()),
    }
    out.update(beside(base, layout=NAME, reserved=TRAINER_NAMES, drop=("prompt", *RESPONSES)))
    return pa.table(out)


def lengths(tokenizer: Any, table: pa.Table) -> np.ndarray:
    """[n] the longer of prompt + chosen and prompt + rejected with the chat template, as
    RewardTrainer compares with max_length."""
    prompts = table.column("prompt").to_pylist()
    chosen = [p + c for p, c in zip(prompts, table.column("chosen").to_pylist(), strict=True)]
    rejected = [p + r for p, r in zip(prompts, table.column("rejected").to_pylist(), strict=True)]
    return np.maximum(
        chat_lengths(tokenizer, chosen, generation=False),
        chat_lengths(tokenizer, rejected, generation=False),
    )


def recipe(args: RecipeArgs) -> dict[str, Any]:
    """DPOConfig on the Trainer's sequential sampler: one export batch of pair rows a step."""
    config, note = sequential_config(args, unit=UNIT)
    return trl_recipe(args, trainers=TRAINERS, config=config, note=note)


TRL_PREFERENCE = Layout(
    name=NAME,
    summary="DPO / reward-model pairs",
    rows=rows,
    keep_order=TRL_SEQUENTIAL + "; the batch size counts (chosen, rejected) pair rows, the "
    "trainer's rows",
    kinds=("preferences",),
    trainers=tuple(trainer for trainer, _ in TRAINERS),
    pair_rows=True,
    length_rule="the longer of prompt+chosen and prompt+rejected with the chat template, as "
    "RewardTrainer compares with max_length (it drops longer pairs; DPOTrainer cuts them)",
    lengths=lengths,
    recipe=recipe,
)
