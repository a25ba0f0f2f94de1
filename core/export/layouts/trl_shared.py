"""What TRL's three layouts (trl_prompt, trl_preference, trl_messages) share: the TRL version
their recipes were checked against, the advice that keeps the order for trainers that use the
Trainer's sampler, and the recipe itself (a config, a load call and a snippet that trains).

Checked against TRL 1.16 and transformers 5.23 and run by tests/e2e/test_trainers.py:
GRPOTrainer/RLOOTrainer's RepeatSampler (shuffle=args.shuffle_dataset, generation_batch_size //
num_generations prompts a chunk, an incomplete last chunk dropped); DPO/Reward/SFT keep
transformers' Trainer sampler, which reads args.train_sampling_strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.export.layouts.base import RecipeArgs

TRL_VERSION = "1.16.0"  # the version the recipes were checked against (requirements-trainers.txt)
TRL_REWARD_FUNCTION = "verifier_reward"  # core.answers' TRL (GRPO/RLOO reward_funcs) entry point
# how DPO, Reward and SFT read the file in order (the start of their keep-order advice)
TRL_SEQUENTIAL = (
    "train_sampling_strategy='sequential' (transformers >= 5.2's TrainingArguments: DPOTrainer, "
    "RewardTrainer and SFTTrainer use the Trainer's sampler) and per_device_train_batch_size x "
    "devices x gradient_accumulation_steps equal to the batch size above"
)


def load_call(container: str, out: Path) -> str:
    """The ``datasets`` call that loads the export as the trainer's train set.

    >>> load_call("hf", Path("/x"))
    "datasets.load_from_disk('/x')"
    """
    if container == "hf":
        return f"datasets.load_from_disk({str(out)!r})"
    kind = "json" if container == "jsonl" else "parquet"
    return f"datasets.load_dataset({kind!r}, data_files={str(out)!r}, split='train')"


def sequential_config(
    args: RecipeArgs, *, unit: str, extra: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """The config fields of a trainer on the Trainer's sampler (DPO, Reward, SFT) that read the
    export in order, one export batch a step, and the note that says so (``unit``: what a row
    is); ``extra`` fields come last."""
    b = args.batch_size or "B"
    config: dict[str, Any] = {
        "train_sampling_strategy": "sequential",
        "per_device_train_batch_size": b,
        "gradient_accumulation_steps": 1,
    }
    if args.max_length is not None:
        config["max_length"] = args.max_length
    config |= extra or {}
    note = (
        f"a step reads per_device_train_batch_size x devices x gradient_accumulation_steps "
        f"= {b} consecutive {unit}: one export batch (one device shown)"
    )
    return config, note


def trl_recipe(
    args: RecipeArgs,
    *,
    trainers: tuple[tuple[str, str], ...],
    config: dict[str, Any],
    note: str,
) -> dict[str, Any]:
    """The manifest's ``train`` for a TRL layout: each trainer's ``config`` fields and a snippet
    that trains the first of ``trainers`` ((trainer class, config class) pairs) on the export,
    scoring rollouts with the studio's verifier when the export ships one."""
    trainer, config_class = trainers[0]
    fields = ", ".join(f"{k}={v!r}" for k, v in config.items())
    lines = ["import datasets", f"from trl import {config_class}, {trainer}"]
    call = "model='MODEL', args=args, train_dataset=train"
    recipe: dict[str, Any] = {}
    if args.reward_file is not None:  # GRPO/RLOO score rollouts with the studio's verifier
        lines = [
            "import importlib.util",
            *lines,
            f"spec = importlib.util.spec_from_file_location('reward', {str(args.reward_file)!r})",
            "reward = importlib.util.module_from_spec(spec)",
            "spec.loader.exec_module(reward)",
        ]
        call = (
            f"model='MODEL', reward_funcs=reward.{TRL_REWARD_FUNCTION}, args=args, "
            "train_dataset=train"
        )
        recipe["reward_function"] = {
            "path": str(args.reward_file),
            "name": TRL_REWARD_FUNCTION,
            "scores": "the studio's verifier on each completion, from the answer, task and "
            "metadata columns beside the prompt",
        }
    lines += [
        f"train = {load_call(args.container, args.out)}",
        f"args = {config_class}(output_dir='run', {fields})",
        f"{trainer}({call}).train()",
    ]
    snippet = "\n".join(lines)
    return {
        "trainer": f"TRL {TRL_VERSION}: " + " or ".join(t for t, _ in trainers),
        **recipe,
        "load": load_call(args.container, args.out),
        "config": config,
        "batches": note
        if args.batch_size
        else "no --batch-size: the order holds, batches are yours",
        "snippet": snippet,
        "command": f"python - <<'EOF'\n{snippet}\nEOF",
        "placeholders": "MODEL: the model's path or hub id",
    }
