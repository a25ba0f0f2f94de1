"""Load, check and train sparse autoencoders (sae-lens 6.x) over one layer's residual stream.

Three sources: a sae-lens release (hub), a sae-lens folder, or a raw safetensors checkpoint of
the common layouts (``W_enc``/``b_enc``/``W_dec``/``b_dec``, plus ``threshold`` for JumpReLU or
a ``k`` for TopK), which becomes the matching sae-lens SAE.

Training goes through sae-lens's own ``SAETrainer`` fed from an in-memory iterator of
activation batches; the result is saved in sae-lens's on-disk format, so
``SAE.load_from_disk(out_dir)`` gives an inference SAE.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import StudioError
from core.models import LoadedModel, check_layer, hook_name, parse_hook

TRAINING_INFO_FILENAME = "studio_training.json"
# Quality below these at the end of training earns a warning.
MIN_EXPLAINED_VARIANCE = 0.7
MAX_DEAD_SHARE = 0.2
# Names of the four weights in raw checkpoints (sae-lens / Gemma Scope / dictionary_learning).
_RAW_KEYS = {
    "W_enc": ("W_enc", "encoder.weight", "w_enc"),
    "b_enc": ("b_enc", "encoder.bias", "b_enc"),
    "W_dec": ("W_dec", "decoder.weight", "w_dec"),
    "b_dec": ("b_dec", "decoder.bias", "bias", "b_dec"),
}

# One epoch of activations: a 2-D tensor [n_tokens, d_in], or a factory that yields the
# epoch's batches afresh on each call (it may shuffle them itself).
Activations = torch.Tensor | Callable[[], Iterable[torch.Tensor]]


def load_sae(
    *,
    path: str | Path | None = None,
    release: str | None = None,
    sae_id: str | None = None,
    device: str = "cpu",
    k: int | None = None,
) -> Any:
    """Load an SAE from a sae-lens folder, a raw safetensors checkpoint (a ``.safetensors`` file
    or a folder holding one; see ``load_raw_sae``) or a sae-lens release + id (hub)."""
    from sae_lens import SAE

    if (path is None) == (release is None):
        raise StudioError("give either an SAE folder (path) or a release with an sae_id")
    if path is not None:
        where = Path(path).expanduser()
        if where.is_file():
            if where.suffix != ".safetensors":
                raise StudioError(f"SAE file '{path}' is not a .safetensors checkpoint")
            return load_raw_sae(where, k=k, device=device)
        if not where.is_dir():
            raise StudioError(f"SAE folder '{path}' does not exist")
        if not _is_sae_lens_folder(where):
            weights = sorted(where.glob("*.safetensors"))
            if len(weights) == 1:
                return load_raw_sae(weights[0], k=k, device=device)
            if len(weights) > 1:
                names = ", ".join(w.name for w in weights)
                raise StudioError(
                    f"SAE folder '{path}' holds several checkpoints ({names}): pass one file"
                )
            raise StudioError(
                f"SAE folder '{path}' has no cfg.json (not a sae-lens SAE) and no .safetensors"
            )
        try:
            sae = SAE.load_from_disk(str(where), device=device)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StudioError(f"SAE folder '{path}' could not be loaded: {exc}") from exc
        if k is not None and int(getattr(sae.cfg, "k", k)) != k:
            raise StudioError(f"--sae-k {k} but the SAE in '{path}' has k={sae.cfg.k}")
        return sae
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


def _is_sae_lens_folder(folder: Path) -> bool:
    """sae-lens writes cfg.json (with d_in) beside sae_weights.safetensors."""
    cfg = _read_json(folder / "cfg.json")
    return cfg is not None and "d_in" in cfg and (folder / "sae_weights.safetensors").is_file()


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudioError(f"'{path}' is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else None


def _raw_tensor(weights: dict[str, torch.Tensor], name: str, file: Path) -> torch.Tensor:
    for key in _RAW_KEYS[name]:
        if key in weights:
            return weights[key]
    raise StudioError(
        f"SAE checkpoint '{file}' has no {name} (looked for {', '.join(_RAW_KEYS[name])}; "
        f"it holds {', '.join(sorted(weights)) or 'nothing'})"
    )


def load_raw_sae(
    file: str | Path, *, k: int | None = None, d_in: int | None = None, device: str = "cpu"
) -> Any:
    """A sae-lens SAE from a raw safetensors checkpoint of the common layouts.

    Weights: ``W_enc`` [d_in, d_sae] (or [d_sae, d_in], as ``encoder.weight`` in
    dictionary_learning), ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in] (or transposed),
    ``b_dec`` [d_in]. Orientation is read from ``b_dec``'s length (or ``d_in`` when given).
    Architecture: JumpReLU when the file has ``threshold`` (or ``log_threshold``), TopK when a
    ``k`` comes from the argument or from a cfg.json/config.json beside the file (``k``,
    ``top_k``), else a ReLU (standard) SAE. The JSON may also give ``hook_name``,
    ``model_name`` and ``apply_b_dec_to_input`` (default False for JumpReLU, as Gemma Scope;
    True otherwise, as sae-lens).
    """
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata
    from safetensors.torch import load_file

    file = Path(file)
    try:
        weights = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise StudioError(f"SAE checkpoint '{file}' could not be read: {exc}") from exc
    cfg: dict[str, Any] = {}
    for name in ("cfg.json", "config.json"):
        cfg = _read_json(file.parent / name) or {}
        if cfg:
            break
    w_enc, b_enc = _raw_tensor(weights, "W_enc", file), _raw_tensor(weights, "b_enc", file)
    w_dec, b_dec = _raw_tensor(weights, "W_dec", file), _raw_tensor(weights, "b_dec", file)
    want = d_in or int(cfg.get("d_in") or 0) or int(b_dec.shape[-1])
    if w_enc.ndim != 2 or w_dec.ndim != 2 or want not in w_enc.shape:
        raise StudioError(
            f"SAE checkpoint '{file}': W_enc has shape {tuple(w_enc.shape)}, expected "
            f"[{want}, d_sae] or [d_sae, {want}] (d_in {want})"
        )
    if w_enc.shape[0] != want:
        w_enc = w_enc.T
    if w_dec.shape[1] != want:
        w_dec = w_dec.T
    d_sae = int(w_enc.shape[1])
    if tuple(w_dec.shape) != (d_sae, want) or tuple(b_enc.shape) != (d_sae,):
        raise StudioError(
            f"SAE checkpoint '{file}': shapes do not fit together (W_enc {tuple(w_enc.shape)}, "
            f"b_enc {tuple(b_enc.shape)}, W_dec {tuple(w_dec.shape)}, b_dec {tuple(b_dec.shape)})"
        )
    threshold = weights.get("threshold")
    if threshold is None and "log_threshold" in weights:
        threshold = weights["log_threshold"].exp()
    k = k if k is not None else cfg.get("k", cfg.get("top_k"))
    if threshold is not None and k is not None:
        raise StudioError(f"SAE checkpoint '{file}' has a JumpReLU threshold and a TopK k={k}")
    metadata = SAEMetadata(
        hook_name=cfg.get("hook_name") or cfg.get("hook_point"),
        model_name=cfg.get("model_name"),
    )
    common: dict[str, Any] = {
        "d_in": want,
        "d_sae": d_sae,
        "device": device,
        "metadata": metadata,
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", threshold is None)),
    }
    state = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    if threshold is not None:
        sae: Any = JumpReLUSAE(JumpReLUSAEConfig(**common))
        state["threshold"] = threshold.reshape(d_sae)
    elif k is not None:
        if not 1 <= int(k) <= d_sae:
            raise StudioError(f"SAE checkpoint '{file}': k={k} must lie in 1..{d_sae}")
        sae = TopKSAE(TopKSAEConfig(k=int(k), **common))
    else:
        sae = StandardSAE(StandardSAEConfig(**common))
    state = {name: t.to(torch.float32).contiguous() for name, t in state.items()}
    sae.load_state_dict(state)
    return sae.to(device)


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


def check_sae_matches(sae: Any, lm: LoadedModel, *, layer: int) -> None:
    """Raise a StudioError when the SAE cannot read ``lm``'s residual stream at ``layer``."""
    check_layer(lm, layer)
    d_in = int(sae.cfg.d_in)
    trained_on = sae.cfg.metadata.model_name
    if d_in != lm.d_model:
        origin = f" (it was trained on '{trained_on}')" if trained_on else ""
        raise StudioError(
            f"SAE d_in {d_in} does not match model '{lm.name}' hidden size {lm.d_model}{origin}"
        )
    hook = sae.cfg.metadata.hook_name
    if not hook:
        return
    try:
        hook_layer = parse_hook(str(hook))
    except StudioError:
        raise StudioError(
            f"SAE was trained on hook '{hook}', but the studio reads the residual stream "
            f"({hook_name(layer)})"
        ) from None
    if hook_layer != layer:
        raise StudioError(
            f"SAE was trained on '{hook}' (layer {hook_layer}), not on layer {layer} "
            f"({hook_name(layer)}) of model '{lm.name}'"
        )


def _same_model(a: str, b: str) -> bool:
    """Names of one model: equal strings, or paths to the same folder."""
    if a == b:
        return True
    pa_, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa_.exists() and pb.exists() and pa_.resolve() == pb.resolve()


def transfer_warning(sae: Any, model: str) -> str | None:
    """A warning when the SAE was trained on another model than ``model`` (same width, else
    ``check_sae_matches`` fails): the paper's transfer finding says it can work; say so."""
    trained_on = sae.cfg.metadata.model_name
    if not trained_on or _same_model(str(trained_on), model):
        return None
    return (
        f"the SAE was trained on model '{trained_on}' and is applied to '{model}' (same hidden "
        f"size {int(sae.cfg.d_in)}): features transfer between related models, but check "
        "that they still mean what you expect"
    )


def quality_warnings(explained_variance: float, dead_features: int, d_sae: int) -> list[str]:
    """Warnings (with what to try) when an SAE reconstructs poorly or wastes features."""
    out = []
    if explained_variance < MIN_EXPLAINED_VARIANCE:
        out.append(
            f"explained variance {explained_variance:.3f} is below {MIN_EXPLAINED_VARIANCE}: "
            "the SAE misses much of the activations; train longer (--epochs), on more tokens "
            "(--max-tokens), or raise --k"
        )
    if d_sae and dead_features / d_sae > MAX_DEAD_SHARE:
        out.append(
            f"{dead_features} of {d_sae} features ({dead_features / d_sae:.0%}) never fire: "
            "lower --width, raise --lr a little, or train on more tokens"
        )
    return out


@dataclass
class TrainProgress:
    """A look at the SAE during training, on a fixed sample of the training tokens."""

    step: int
    steps: int
    epoch: float
    explained_variance: float
    dead_features: int
    d_sae: int


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


def _eval_sample(activations: Activations, n: int, seed: int) -> torch.Tensor:
    """A fixed sample of at most ``n`` training tokens for looks during training."""
    if isinstance(activations, torch.Tensor):
        gen = torch.Generator().manual_seed(seed + 7)
        idx = torch.randperm(activations.shape[0], generator=gen)[:n]
        return activations[idx].float()
    taken: list[torch.Tensor] = []
    have = 0
    for chunk in activations():
        taken.append(chunk[: n - have].float())
        have += taken[-1].shape[0]
        if have >= n:
            break
    return torch.cat(taken)


@torch.no_grad()
def _evaluate(
    sae: Any, activations: Activations, *, mean: torch.Tensor, batch_size: int
) -> tuple[float, int]:
    """Explained variance over all tokens and the number of features that never fire."""
    sq_err = 0.0
    sq_total = 0.0
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    source = [activations] if isinstance(activations, torch.Tensor) else activations()
    device = sae.W_enc.device
    for x in _rebatch(source, batch_size):
        x = x.to(device, sae.W_enc.dtype)
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
    report: Callable[[TrainProgress], None] | None = None,
    eval_every: int | None = None,
    eval_tokens: int = 4096,
) -> SaeTrainResult:
    """Train a TopK SAE with sae-lens's ``SAETrainer`` and save it as an inference SAE.

    ``activations`` is a 2-D float tensor [n_tokens, d_in] (shuffled per epoch with ``seed``)
    or a factory returning one epoch of [n, d_in] batches per call. The input norm is
    scaled to sqrt(d_in) during training and folded back into the weights, so the saved SAE
    reads raw activations. ``progress(tokens_done, tokens_total)`` is called per step;
    ``report(TrainProgress)`` every ``eval_every`` steps (default: 5 looks per run) with the
    explained variance and dead features on a fixed ``eval_tokens`` sample, and once at the end
    with the figures over all tokens. Same seed and data give the same weights.
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

    steps_per_epoch = max(1, n_tokens // batch_size)
    every = eval_every or max(1, steps // 5)
    sample = _eval_sample(activations, eval_tokens, seed) if report is not None else None

    def look(step: int) -> None:
        assert report is not None and sample is not None
        explained, dead = _evaluate(sae, sample * scaling, mean=mean * scaling, batch_size=4096)
        report(TrainProgress(step, steps, step / steps_per_epoch, explained, dead, width))

    def stream() -> Iterator[torch.Tensor]:
        epoch = 0
        done = 0
        step = 0
        while True:  # the trainer stops by sample count; never run dry on a short last batch
            for batch in _rebatch(_epoch_source(activations, epoch, seed), batch_size):
                if batch.shape[0] < batch_size:
                    continue
                # Asked for batch step+1: the trainer has finished step `step`.
                if report is not None and step and step % every == 0 and step < steps:
                    look(step)
                done += batch.shape[0]
                step += 1
                if progress is not None:
                    progress(min(done, total), total)
                yield batch
            epoch += 1

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
    if report is not None:
        report(TrainProgress(steps, steps, steps / steps_per_epoch, explained, dead, width))
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
