"""TRL's conversational language-modelling layout (SFTTrainer): ``messages``, a chat's turns, or
for a responses dataset the prompt as the user turn and the response as the assistant's (the
chosen responses only unless ``--responses all``: a rejected response is what the model should
not say). Chats and responses datasets.

    >>> t = pa.table({"id": ["a"], "prompt": ["hi"], "response": ["hello"]})
    >>> rows(t, kind="responses", data_source="d").column("messages").to_pylist()
    [[{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from core.export.layouts.base import RESPONSES, Layout, RecipeArgs, beside, column
from core.export.layouts.messages import exchange, parse_messages
from core.export.layouts.trl_shared import TRL_SEQUENTIAL, sequential_config, trl_recipe
from core.export.lengths import chat_lengths

NAME = "trl-messages"
TRAINERS = (("SFTTrainer", "SFTConfig"),)
# column names the SFT tokenizer reads as its own (images, tools, templates)
TRAINER_NAMES = ("completion", "image", "images", "tools", "chat_template_kwargs")


def rows(chunk: pa.Table, *, kind: str, data_source: str) -> pa.Table:
    """The conversation as ``messages``, then every other column but the responses."""
    kept = beside(chunk, layout=NAME, reserved=TRAINER_NAMES, drop=("prompt", *RESPONSES))
    if kind == "responses":
        turns = exchange(column(chunk, "prompt"), column(chunk, "response"))
    else:
        turns = parse_messages(column(chunk, "messages"))
    return pa.table({"messages": turns, **kept})


def lengths(tokenizer: Any, table: pa.Table) -> np.ndarray:
    """[n] the conversation's tokens with the chat template, as SFTTrainer compares with
    max_length."""
    return chat_lengths(tokenizer, table.column("messages").to_pylist(), generation=False)


def recipe(args: RecipeArgs) -> dict[str, Any]:
    """SFTConfig on the Trainer's sequential sampler, no packing: one export batch a step."""
    extra = {"packing": False, "shuffle_dataset": False}
    config, note = sequential_config(args, unit="rows", extra=extra)
    return trl_recipe(args, trainers=TRAINERS, config=config, note=note)


TRL_MESSAGES = Layout(
    name=NAME,
    summary="SFT chats",
    rows=rows,
    keep_order=TRL_SEQUENTIAL + "; SFTConfig(shuffle_dataset=False, packing=False) (packing "
    "regroups sequences by length)",
    kinds=("chats", "responses"),
    trainers=tuple(trainer for trainer, _ in TRAINERS),
    picks_responses=True,
    length_rule="the conversation with the chat template, as SFTTrainer compares with "
    "max_length (it cuts longer ones)",
    lengths=lengths,
    recipe=recipe,
)
