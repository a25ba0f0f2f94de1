"""The signals a probe learns (difficulty, quality, and the next ones), one registry entry each:
its probe kinds, what a higher label may mean, their defaults and the words of its help. The
CLI's command of that name, the probe step and the pages read it. Import-light (no numpy), so the
CLI's ``--help`` can build its commands from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Signal = Literal["difficulty", "quality"]


@dataclass(frozen=True)
class SignalSpec:
    """One signal: its probe kinds (the first is the default; core.signals.default_kind picks by the label's values), what a
    higher label may mean (the first is the default, see :meth:`default_direction`), and the
    words its CLI command and page use."""

    name: Signal
    kinds: tuple[str, ...]
    directions: tuple[str, ...]
    label_help: str
    kind_help: str
    higher_help: str

    def default_direction(self, label: str) -> str:
        """What a higher value of ``label`` means when the user does not say: for difficulty a
        pass-rate label (``pass*``) is easier, any other harder; for quality, better."""
        if self.name == "difficulty" and label.lower().startswith("pass"):
            return "easier"
        return self.directions[0]


REGISTRY: dict[str, SignalSpec] = {
    spec.name: spec
    for spec in (
        SignalSpec(
            name="difficulty",
            kinds=("elasticnet", "ridge"),
            directions=("harder", "easier"),
            label_help="the label to learn: a difficulty column, or pass_rate from `rollouts`",
            kind_help=")",
            higher_help="easier for pass* labels, else harder)",
        ),
        SignalSpec(
            name="quality",
            kinds=("logistic", "ridge"),
            directions=("better", "worse"),
            label_help=(
                "the label to learn: 0/1 (1 = good; e.g. quality_mark from the app) or a score"
            ),
            kind_help=" for a 0/1 label, ridge for a score, with a note on stderr)",
            higher_help="better)",
        ),
    )
}
SIGNALS: tuple[Signal, ...] = tuple(REGISTRY)  # type: ignore[assignment]
