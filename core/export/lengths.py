"""Row lengths in tokens as each trainer measures them, for ``export --tokenizer T --max-length N``.

Trainers drop or cut rows longer than their limit after the file is loaded, which silently
shifts every later batch off the export's batch boundaries. The export measures each row the way
its trainer will (the same chat template calls) and drops those over the limit before it orders
and batches, so every batch reaches the trainer whole; the manifest lists what was dropped.

What each layout's trainer does with long rows (verl 0.9.1, TRL 1.16: tests/e2e checks them);
each layout says it in its ``length_rule`` and measures it with its ``lengths``
(core.export.layouts):

- ``verl``: the prompt with the chat template and its generation prompt, against
  ``data.max_prompt_length``; ``data.filter_overlong_prompts=True`` drops longer prompts (and
  shifts every later batch), without it they reach the rollout.
- ``trl-prompt``: the same prompt tokens; GRPOTrainer/RLOOTrainer neither cut nor drop them.
- ``trl-preference``: the longer of prompt + chosen and prompt + rejected with the chat template,
  against ``max_length``: RewardTrainer drops such pairs; DPOTrainer cuts them (and drops the
  pairs whose prompt alone fills ``max_length``).
- ``trl-messages``: the whole conversation with the chat template, against ``max_length``:
  SFTTrainer cuts longer conversations (mid-answer) and drops none.

``--max-length N`` drops every row whose length is over N: exactly the rows RewardTrainer and
verl's filter drop, and the rows DPO and SFT would cut, so what trains is what was exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import StudioError

# what the prompt layouts (verl, trl-prompt) measure; each adds which trainer compares it
PROMPT_TOKENS = (
    "prompt tokens with the chat template and its generation prompt "
    "(apply_chat_template(prompt, add_generation_prompt=True))"
)
# what a tokenizer folder holds (transformers reads one of them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(source: str) -> Any:
    """The trainer's tokenizer from a local folder or hub id, or a one-line error naming it."""
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) and not path.exists():
        raise StudioError(f"--tokenizer {source}: no such folder")
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise StudioError(
            f"--tokenizer {source}: the folder holds no tokenizer ({' or '.join(TOKENIZER_FILES)})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"--tokenizer {source}: cannot load a tokenizer ({first})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise StudioError(
            f"--tokenizer {source}: it has no chat template, and the trainers format "
            "conversational rows with one; use the tokenizer of the model you will train"
        )
    return tokenizer


def chat_lengths(tokenizer: Any, conversations: list[Any], *, generation: bool) -> np.ndarray:
    """[n] the token count of each conversation (a list of {role, content}) with the chat
    template, as the trainers tokenize it (``generation``: with the generation prompt)."""
    if not conversations:
        return np.zeros(0, np.int64)
    out = tokenizer.apply_chat_template(
        conversations, tokenize=True, add_generation_prompt=generation, return_dict=True
    )
    return np.array([len(ids) for ids in out["input_ids"]], dtype=np.int64)


def prompt_lengths(tokenizer: Any, rows: pa.Table) -> np.ndarray:
    """[n] the tokens of each row's ``prompt`` (chat messages) with the chat template and its
    generation prompt: what verl's filter and GRPO/RLOO see."""
    return chat_lengths(tokenizer, rows.column("prompt").to_pylist(), generation=True)
