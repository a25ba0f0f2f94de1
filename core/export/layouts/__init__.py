"""The export layouts, by name: what each row of an export holds, for which trainer.

One file per layout, each defining one :class:`~core.export.layouts.base.Layout`; the registry
below names them. Adding a layout is one new file plus one line in ``LAYOUTS``: the CLI's
``--format`` choices, the Export page's options, the export step, its checks and the manifest's
train recipe all read it from here.

- ``rows`` (rows.py): every column; ``--format jsonl | parquet | hf``.
- ``verl`` (verl.py): verl's RLHFDataset (GRPO/DAPO), with the studio's verifier as its reward.
- ``trl-prompt`` (trl_prompt.py): TRL's prompt-only form (GRPOTrainer, RLOOTrainer).
- ``trl-preference`` (trl_preference.py): TRL's preference pairs (DPOTrainer, RewardTrainer).
- ``trl-messages`` (trl_messages.py): TRL's conversations (SFTTrainer).

    >>> FORMATS
    ('jsonl', 'parquet', 'hf', 'verl', 'trl-prompt', 'trl-preference', 'trl-messages')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from core.errors import StudioError
from core.export.layouts import rows, trl_messages, trl_preference, trl_prompt, verl
from core.export.layouts.base import Layout
from core.export.writer import CONTAINERS as WRITER_CONTAINERS

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        rows.ROWS,
        verl.VERL,
        trl_prompt.TRL_PROMPT,
        trl_preference.TRL_PREFERENCE,
        trl_messages.TRL_MESSAGES,
    )
}


def format_table() -> dict[str, tuple[Layout, str]]:
    """Every ``--format`` name with its layout and the container it writes by default, read
    from :data:`LAYOUTS` as it is now (a layout registered after import, as a test does,
    counts)."""
    return {
        fmt: (layout, container)
        for layout in LAYOUTS.values()
        for fmt, container in layout.formats().items()
    }


def layout_of(fmt: str) -> Layout:
    """The layout ``--format fmt`` writes, or a one-line error naming the formats."""
    table = format_table()
    if fmt not in table:
        raise StudioError(f"unknown format {fmt!r}: use {', '.join(table)}")
    return table[fmt][0]


def get_layout(name: str) -> Layout:
    """The layout called ``name``, or a one-line error naming the layouts."""
    if name not in LAYOUTS:
        raise StudioError(f"unknown layout {name!r}: use {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def check_kind(layout: Layout, kind: str) -> None:
    """A one-line error when ``layout`` cannot be filled from a dataset of ``kind``, naming the
    layouts that can: the one made for that kind, else those for every kind (the last
    registered first: rows, the plainest, last), with the general prompt layout."""
    if layout.kinds is None or kind in layout.kinds:
        return
    own = next((x.name for x in LAYOUTS.values() if x.kinds and kind in x.kinds), None)
    general = [x.name for x in LAYOUTS.values() if x.kinds is None][::-1]
    choices = [own, general[0]] if own else general
    advice = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
    raise StudioError(
        f"--format {layout.name} needs a dataset of kind {' or '.join(layout.kinds)}; this one "
        f"is {kind} (use {advice})"
    )


def to_layout(chunk: pa.Table, layout: str, *, kind: str, data_source: str = "") -> pa.Table:
    """A chunk of export rows in ``layout``. ``kind`` is the dataset's (prompts, preferences,
    chats, responses): a layout made for other kinds is an error. ``data_source`` fills verl's
    column of that name (verl picks the reward function by it).

        >>> t = pa.table({"id": ["a"], "prompt": ["2+2?"], "answer": ["4"]})
        >>> to_layout(t, "verl", kind="prompts", data_source="d").column_names
        ['data_source', 'prompt', 'ability', 'reward_model', 'extra_info']
    """
    spec = get_layout(layout)
    check_kind(spec, kind)
    return spec.rows(chunk, kind=kind, data_source=data_source)


def layout_schema(input_schema: pa.Schema, layout: str, *, kind: str) -> pa.Schema:
    """The schema :func:`to_layout` gives for chunks of ``input_schema`` (fixed for a file)."""
    spec = get_layout(layout)
    check_kind(spec, kind)
    return spec.schema(input_schema, kind=kind)


def trainer_lengths(tokenizer: Any, rows: pa.Table, *, layout: str) -> np.ndarray:
    """[n] the length of each row of ``rows`` (a table in ``layout``, :func:`to_layout`) that
    ``layout``'s trainer compares with its limit (core.export.lengths)."""
    spec = get_layout(layout)
    if spec.lengths is None:
        measured = [x.name for x in LAYOUTS.values() if x.lengths is not None]
        raise StudioError(
            f"--max-length measures rows as a trainer does; --format {layout} has no trainer "
            f"(use {', '.join(measured)})"
        )
    return spec.lengths(tokenizer, rows)


# As registered at import: the CLI's --format choices (core/cli.py spells them out for a fast
# --help; tests/test_rules.py checks they agree) and the Export page's options.
FORMATS = tuple(format_table())
# the containers some layout writes, in the writer's order
CONTAINERS = tuple(c for c in WRITER_CONTAINERS if any(c in x.containers for x in LAYOUTS.values()))
