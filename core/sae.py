"""Load, check and train sparse autoencoders (sae-lens 6.x) over one layer's residual stream.

Training goes through sae-lens's own ``SAETrainer`` fed from an in-memory iterator of
activation batches; the result is saved in sae-lens's on-disk format, so
``SAE.load_from_disk(out_dir)`` gives an inference SAE.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import StudioError
from core.models import LoadedModel, check_layer

TRAINING_INFO_FILENAME = "studio_training.json"
_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")

# One epoch of activations: a 2-D tensor [n_tokens, d_in], or a factory that yields the
# epoch's batches afresh on each call (it may shuffle them itself).
Activations = torch.Tensor | Callable[[], Iterable[torch.Tensor]]


def load_sae(
    *,
    path: str | Path | None = None,
    release: str | None = None,
    sae_id: str | None = None,
    device: str = "cpu",
) -> Any:
    """Load an SAE from a local sae-lens folder (``path``) or a sae-lens release + id (hub)."""
    from sae_lens import SAE

    if (path is None) == (release is None):
        raise StudioError("give either an SAE folder (path) or a release with an sae_id")
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise StudioError(f"SAE folder '{path}' does not exist")
        if not (folder / "cfg.json").is_file():
            raise StudioError(f"SAE folder '{path}' has no cfg.json (not a sae-lens SAE)")
        try:
            return SAE.load_from_disk(str(folder), device=device)
        except (OSError, ValueError, KeyError) as exc:
            raise StudioError(f"SAE folder '{path}' could not be loaded: {exc}") from exc
    if sae_id is None:
        raise StudioError(f"SAE release '{release}' needs an sae_id")
    try:
        return SAE.from_pretrained(release, sae_id, device=device)  # type: ignore[arg-type]
    except Exception as exc:  # hub, network and registry errors all end here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(
            f"SAE '{release}' / '{sae_id}' could not be loaded from the Hugging Face hub "
            f"(offline?): {reason}"
        ) from exc


def sae_info(sae: Any) -> dict[str, Any]:
    """What a feature run records about its SAE: sizes, architecture, hook, k."""
    cfg = sae.cfg
    metadata = cfg.metadata
    info: dict[str, Any] = {
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "architecture": cfg.architecture(),
        "hook_name": metadata.hook_name,
        "model_name": metadata.model_name,
        "dtype": str(cfg.dtype),
    }
    k = getattr(cfg, "k", None)
    if k is not None:
        info["k"] = int(k)
    return info


def _hook_layer(hook_name: str) -> int | None:
    """The layer (block output index) a residual hook reads; None when it is no resid hook."""
    match = _RESID_HOOK.match(hook_name)
    if match is None:
        return None
    index = int(match.group(1))
    # hook_resid_pre of block N is the output of block N-1.
    return index if match.group(2) == "post" else index - 1


def check_sae_matches(sae: Any, lm: LoadedModel, *, layer: int) -> None:
    """Raise a StudioError when the SAE cannot read ``lm``'s residual stream at ``layer``."""
    check_layer(lm, layer)
    d_in = int(sae.cfg.d_in)
    if d_in != lm.d_model:
        raise StudioError(
            f"SAE d_in {d_in} does not match model '{lm.name}' hidden size {lm.d_model}"
        )
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        return
    hook_layer = _hook_layer(str(hook_name))
    if hook_layer is None:
        raise StudioError(
            f"SAE was trained on hook '{hook_name}', but the studio reads the residual stream "
            f"(blocks.{layer}.hook_resid_post)"
        )
    if hook_layer != layer:
        raise StudioError(
            f"SAE was trained on '{hook_name}' (layer {hook_layer}), not on layer {layer} "
            f"of model '{lm.name}'"
        )


@dataclass
class SaeTrainResult:
    """Where the trained SAE lies and how well it reconstructs its training tokens."""

    path: str
    explained_variance: float
    dead_features: int
    d_sae: int
    n_tokens: int
    k: int


def _epoch_source(activations: Activations, epoch: int, seed: int) -> Iterator[torch.Tensor]:
    """One epoch of activation chunks; a tensor is shuffled with a per-epoch seeded generator."""
    if isinstance(activations, torch.Tensor):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(activations.shape[0], generator=gen)
        chunk = 65_536
        for start in range(0, len(perm), chunk):
            yield activations[perm[start : start + chunk]]
    else:
        yield from activations()


def _rebatch(chunks: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Cut a stream of [n_i, d] chunks into [batch_size, d] batches (the last may be short)."""
    pending: list[torch.Tensor] = []
    n_pending = 0
    for chunk in chunks:
        pending.append(chunk.float())
        n_pending += chunk.shape[0]
        while n_pending >= batch_size:
            joined = torch.cat(pending)
            yield joined[:batch_size]
            rest = joined[batch_size:]
            pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if n_pending:
        yield torch.cat(pending)


def _check_chunk(chunk: torch.Tensor, d_in: int) -> None:
    if chunk.ndim != 2 or chunk.shape[1] != d_in:
        raise StudioError(
            f"activation batch has shape {tuple(chunk.shape)}, expected [n_tokens, {d_in}]"
        )


@torch.no_grad()
def _data_stats(activations: Activations, d_in: int) -> tuple[int, float, torch.Tensor]:
    """Token count, mean L2 norm and mean vector of the training activations (one pass)."""
    n = 0
    norm_sum = 0.0
    total = torch.zeros(d_in, dtype=torch.float64)
    source = [activations] if isinstance(activations, torch.Tensor) else activations()
    for chunk in source:
        _check_chunk(chunk, d_in)
        x = chunk.double()
        n += x.shape[0]
        norm_sum += float(x.norm(dim=-1).sum())
        total += x.sum(0)
    if n == 0:
        raise StudioError("no activations to train the SAE on")
    return n, norm_sum / n, total / n


@torch.no_grad()
def _evaluate(
    sae: Any, activations: Activations, *, mean: torch.Tensor, batch_size: int
) -> tuple[float, int]:
    """Explained variance over all tokens and the number of features that never fire."""
    sq_err = 0.0
    sq_total = 0.0
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    source = [activations] if isinstance(activations, torch.Tensor) else activations()
    for x in _rebatch(source, batch_size):
        x = x.to(sae.device, sae.dtype)
        codes = sae.encode(x)
        recon = sae.decode(codes)
        sq_err += float((x - recon).double().pow(2).sum())
        sq_total += float((x.double() - mean.to(x.device)).pow(2).sum())
        fired |= (codes > 0).any(0).cpu()
    explained = 1.0 - sq_err / sq_total if sq_total > 0 else 0.0
    return explained, int((~fired).sum())


def train_sae(
    activations: Activations,
    *,
    d_in: int,
    width: int,
    k: int,
    out_dir: str | Path,
    epochs: int = 1,
    lr: float = 4e-4,
    batch_size: int = 4096,
    seed: int = 0,
    hook_name: str | None = None,
    model_name: str | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> SaeTrainResult:
    """Train a TopK SAE with sae-lens's ``SAETrainer`` and save it as an inference SAE.

    ``activations`` is a 2-D float tensor [n_tokens, d_in] (shuffled per epoch with ``seed``)
    or a factory returning one epoch of [n, d_in] batches per call. The input norm is
    scaled to sqrt(d_in) during training and folded back into the weights, so the saved SAE
    reads raw activations. ``progress(tokens_done, tokens_total)`` is called per step.
    Same seed and data give the same weights.
    """
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    if not 1 <= k <= width:
        raise StudioError(f"SAE k must be between 1 and the width {width}, got {k}")
    if epochs < 1 or batch_size < 1:
        raise StudioError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if isinstance(activations, torch.Tensor):
        _check_chunk(activations, d_in)
    n_tokens, mean_norm, mean = _data_stats(activations, d_in)
    batch_size = min(batch_size, n_tokens)
    steps = max(1, (n_tokens * epochs) // batch_size)
    total = steps * batch_size

    torch.manual_seed(seed)
    metadata = SAEMetadata(hook_name=hook_name, model_name=model_name)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=width,
            k=k,
            device=device,
            normalize_activations="expected_average_only_in",
            metadata=metadata,
        )
    )
    scaling = math.sqrt(d_in) / mean_norm if mean_norm > 0 else 1.0
    with torch.no_grad():
        # Start the decoder bias at the (scaled) data mean: residual streams are far from 0.
        sae.b_dec.copy_((mean * scaling).to(sae.b_dec.dtype))

    def stream() -> Iterator[torch.Tensor]:
        epoch = 0
        done = 0
        while True:  # the trainer stops by sample count; never run dry on a short last batch
            for batch in _rebatch(_epoch_source(activations, epoch, seed), batch_size):
                if batch.shape[0] < batch_size:
                    continue
                done += batch.shape[0]
                if progress is not None:
                    progress(min(done, total), total)
                yield batch
            epoch += 1

    steps_per_epoch = max(1, n_tokens // batch_size)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="constant",
        lr_decay_steps=steps // 5,
        device=device,
        # A feature idle for half an epoch counts as dead for the TopK auxiliary loss.
        dead_feature_window=max(1, min(1000, steps_per_epoch // 2)),
        feature_sampling_window=max(1, min(2000, steps_per_epoch)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=stream())
    # fit() estimates the norm from the stream only when no factor is set; ours uses all tokens.
    trainer.activation_scaler.scaling_factor = scaling
    trained = trainer.fit()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trained.save_inference_model(str(out))

    inference_sae = load_sae(path=out, device=device)
    explained, dead = _evaluate(inference_sae, activations, mean=mean, batch_size=batch_size)
    result = SaeTrainResult(
        path=str(out),
        explained_variance=explained,
        dead_features=dead,
        d_sae=width,
        n_tokens=n_tokens,
        k=k,
    )
    training = {
        "result": asdict(result),
        "config": {
            "d_in": d_in,
            "width": width,
            "k": k,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "hook_name": hook_name,
            "model_name": model_name,
        },
    }
    # Written last: its presence marks a finished training run.
    (out / TRAINING_INFO_FILENAME).write_text(json.dumps(training, indent=2))
    return result
