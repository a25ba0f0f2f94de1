"""Row lengths in tokens as each trainer measures them, for ``export --tokenizer T --max-length N``.

Trainers drop or cut rows longer than their limit after the file is loaded, which silently
shifts every later batch off the export's batch boundaries. The export measures each row the way
its trainer will (the same chat template calls) and drops those over the limit before it orders
and batches, so every batch reaches the trainer whole; the manifest lists what was dropped.

What each layout's trainer does with long rows (verl 0.9.1, TRL 1.16: tests/e2e checks them):

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

    >>> sorted(LENGTH_RULE)
    ['trl-messages', 'trl-preference', 'trl-prompt', 'verl']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import StudioError

_PROMPT = (
    "prompt tokens with the chat template and its generation prompt "
    "(apply_chat_template(prompt, add_generation_prompt=True))"
)
# what a tokenizer folder holds (transformers reads one of them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LENGTH_RULE = {
    "verl": _PROMPT + ", as verl's filter_overlong_prompts compares with data.max_prompt_length",
    "trl-prompt": _PROMPT + ", as GRPOTrainer/RLOOTrainer tokenize prompts",
    "trl-preference": "the longer of prompt+chosen and prompt+rejected with the chat template, "
    "as RewardTrainer compares with max_length (it drops longer pairs; DPOTrainer cuts them)",
    "trl-messages": "the conversation with the chat template, as SFTTrainer compares with "
    "max_length (it cuts longer ones)",
}


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


def _chat_lengths(tokenizer: Any, conversations: list[Any], *, generation: bool) -> np.ndarray:
    if not conversations:
        return np.zeros(0, np.int64)
    out = tokenizer.apply_chat_template(
        conversations, tokenize=True, add_generation_prompt=generation, return_dict=True
    )
    return np.array([len(ids) for ids in out["input_ids"]], dtype=np.int64)


def trainer_lengths(tokenizer: Any, rows: pa.Table, *, layout: str) -> np.ndarray:
    """[n] the length of each row of ``rows`` (a table in ``layout``, core.formats.to_layout)
    that ``layout``'s trainer compares with its limit (see the module doc)."""
    if layout not in LENGTH_RULE:
        raise StudioError(
            f"--max-length measures rows as a trainer does; --format {layout} has no trainer "
            f"(use {', '.join(LENGTH_RULE)})"
        )
    if layout in ("verl", "trl-prompt"):
        return _chat_lengths(tokenizer, rows.column("prompt").to_pylist(), generation=True)
    if layout == "trl-messages":
        return _chat_lengths(tokenizer, rows.column("messages").to_pylist(), generation=False)
    prompts = rows.column("prompt").to_pylist()
    chosen = [p + c for p, c in zip(prompts, rows.column("chosen").to_pylist(), strict=True)]
    rejected = [p + r for p, r in zip(prompts, rows.column("rejected").to_pylist(), strict=True)]
    return np.maximum(
        _chat_lengths(tokenizer, chosen, generation=False),
        _chat_lengths(tokenizer, rejected, generation=False),
    )
