"""Load, check and train sparse autoencoders (sae-lens 6.x) over one layer's residual stream.

Three sources: a sae-lens release (hub), a sae-lens folder, or a raw safetensors checkpoint of
the common layouts (``W_enc``/``b_enc``/``W_dec``/``b_dec``, plus ``threshold`` for JumpReLU or
a ``k`` for TopK), which becomes the matching sae-lens SAE.

Training goes through sae-lens's own ``SAETrainer`` fed from an in-memory iterator of
activation batches; the result is saved in sae-lens's on-disk format, so
``SAE.load_from_disk(out_dir)`` gives an inference SAE. It is written into a temp folder beside
``out_dir`` (``.studio-sae-tmp-<pid>-...``) that is renamed into place only once the SAE is
complete, so a killed training never leaves a complete-looking folder; the next training in that
folder sweeps the temp folders of killed processes (``leftover_temp_dirs`` lists them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import StudioError
from core.models import (
    LoadedModel,
    check_layer,
    corrupt_file_error,
    hook_name,
    parse_hook,
    safetensors_problem,
)

TRAINING_INFO_FILENAME = "studio_training.json"
# What an SAE folder holds (sae-lens's two files and our training record): train-sae replaces a
# folder holding only these, never one with anything else in it.
SAE_FILES = ("cfg.json", "sae_weights.safetensors", TRAINING_INFO_FILENAME)
# Temp folders of a training in progress (tmp) and of an earlier SAE moved aside while the new
# one is renamed into place (old): ".studio-sae-tmp-<pid>-<8 hex>-<name>".
_TEMP_PREFIX = ".studio-sae-"
_TEMP_NAME = re.compile(r"^\.studio-sae-(?:tmp|old)-(\d+)-[0-9a-f]{8}-")
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
        _refuse_temp_folder(where)
        if where.is_file():
            if where.suffix != ".safetensors":
                raise StudioError(f"SAE file '{path}' is not a .safetensors checkpoint")
            return load_raw_sae(where, k=k, device=device)
        if not where.is_dir():
            raise StudioError(f"SAE folder '{path}' does not exist")
        _check_complete(where)
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
        sae = _load_sae_lens_folder(where, device=device)
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


def _load_sae_lens_folder(folder: Path, *, device: str) -> Any:
    """``SAE.load_from_disk``, with a truncated or corrupt weights file named in one line."""
    from sae_lens import SAE

    weights = folder / "sae_weights.safetensors"
    if (reason := safetensors_problem(weights)) is not None:
        raise corrupt_file_error(weights, reason, what="SAE weights file")
    try:
        sae = SAE.load_from_disk(str(folder), device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"SAE folder '{folder}' could not be loaded: {first}") from exc
    _check_finite(sae, weights)
    return sae


def _check_finite(sae: Any, file: Path) -> None:
    """A garbled weights file whose header survived often holds NaN or inf: refuse it."""
    for name, tensor in sae.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise corrupt_file_error(
                file, f"{name} holds NaN or infinite values", what="SAE weights file"
            )


def _refuse_temp_folder(where: Path) -> None:
    """A train-sae temp folder (running, or left by a killed run) is never an SAE to read."""
    for part in (where, *where.parents):
        match = _TEMP_NAME.match(part.name)
        if match is None:
            continue
        pid = int(match.group(1))
        state = "still running" if _pid_alive(pid) else "killed before it finished"
        raise StudioError(
            f"SAE path '{where}' is a temporary folder of an unfinished train-sae (process "
            f"{pid}, {state}): use the folder train-sae names when it finishes"
        )


def _check_complete(folder: Path) -> None:
    """An SAE folder of ours (or sae-lens's) missing one of its files: say which."""
    has = {name: (folder / name).is_file() for name in SAE_FILES}
    ours = has[TRAINING_INFO_FILENAME]
    cfg_says_sae = "d_in" in (_read_json(folder / "cfg.json") or {})
    if (ours or cfg_says_sae) and not (has["cfg.json"] and has["sae_weights.safetensors"]):
        missing = [n for n in ("cfg.json", "sae_weights.safetensors") if not has[n]]
        raise StudioError(
            f"SAE folder '{folder}' lacks {' and '.join(missing)}: it is incomplete (an "
            "interrupted copy or training?); train it again or copy the whole folder"
        )


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine); unsure counts as alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def leftover_temp_dirs(folder: str | Path) -> list[Path]:
    """Temp folders that killed train-sae runs left in ``folder``: ours by name
    (``.studio-sae-tmp-<pid>-...``, ``.studio-sae-old-<pid>-...``) and of a process that no
    longer runs. A training in progress is never listed. Sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP_NAME.match(entry.name)
        live = match is not None and _pid_alive(int(match.group(1)))
        if match and not live and entry.is_dir() and not entry.is_symlink():
            out.append(entry)
    return out


def sweep_temp_dirs(folder: str | Path) -> list[Path]:
    """Remove ``leftover_temp_dirs(folder)``; returns what was removed."""
    gone = leftover_temp_dirs(folder)
    for entry in gone:
        shutil.rmtree(entry, ignore_errors=True)
    return gone


def check_sae_out(out: str | Path) -> Path:
    """Where train-sae may write: a new or empty folder, or an earlier SAE folder (holding only
    ``SAE_FILES``), which the new SAE replaces. Anything else is refused in one line, before any
    work, so --out never deletes a folder of other files."""
    out = Path(out).expanduser()
    if _TEMP_NAME.match(out.name):
        raise StudioError(f"--out {out}: that name is kept for train-sae's temp folders")
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise StudioError(f"--out {out} is a file: give a folder for the SAE")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in SAE_FILES)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise StudioError(
                f"--out {out} is a folder holding other files ({shown}), not an SAE: train-sae "
                "replaces only an earlier SAE folder; give a new or empty folder"
            )
    return out


def _temp_name(kind: str, name: str) -> str:
    return f"{_TEMP_PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``out`` (after sweeping those of killed trainings there); on
    success it is renamed to ``out``, on an error removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_temp_dirs(out.parent)
    tmp = out.with_name(_temp_name("tmp", out.name))
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished SAE folder ``tmp`` to ``out``, replacing an earlier SAE there (moved
    aside first, removed last: a kill between the renames leaves only swept temp folders)."""
    aside = None
    if out.exists():
        aside = out.with_name(_temp_name("old", out.name))
        out.rename(aside)
    tmp.rename(out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def training_info(folder: str | Path) -> dict[str, Any] | None:
    """What train-sae wrote beside the SAE (``studio_training.json``: result, config and the
    ``run`` that records it: store path and run id), or None for an SAE from elsewhere."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    try:
        return _read_json(path / TRAINING_INFO_FILENAME)
    except StudioError:
        return None


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
    if (reason := safetensors_problem(file)) is not None:
        raise corrupt_file_error(file, reason, what="SAE checkpoint")
    try:
        weights = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise corrupt_file_error(file, str(exc).strip(), what="SAE checkpoint") from exc
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
    _check_finite(sae, file)
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


@dataclass(frozen=True)
class SaeTrainConfig:
    """Options of the train-sae step, checked once before any model is loaded.

    ``width`` None means 8 x the model's hidden size; ``max_length`` None means the model's
    context (``core.models.default_max_length``); ``eval_every`` None means 5 looks per run.
    Each error names the flag, e.g. ``SaeTrainConfig(lr=float("nan"))`` -> "--lr must be a
    positive finite number, got nan".
    """

    width: int | None = None
    k: int = 32
    epochs: int = 2
    lr: float = 1e-3
    batch_tokens: int = 1024
    max_length: int | None = None
    max_tokens: int = 1_000_000
    seed: int = 0
    eval_every: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "--k": self.k,
            "--epochs": self.epochs,
            "--batch-tokens": self.batch_tokens,
            "--max-tokens": self.max_tokens,
            "--width": self.width,
            "--eval-every": self.eval_every,
        }
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise StudioError(f"{flag} must be at least 1, got {value}")
        if self.max_length is not None and self.max_length < 2:
            raise StudioError(f"--max-length must be at least 2, got {self.max_length}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise StudioError(f"--lr must be a positive finite number, got {self.lr}")
        if self.width is not None and self.k > self.width:
            raise StudioError(f"--k {self.k} must not exceed --width {self.width}")
        if self.seed < 0:
            raise StudioError(f"--seed must be 0 or more, got {self.seed}")


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
    run: dict[str, Any] | None = None,
) -> SaeTrainResult:
    """Train a TopK SAE with sae-lens's ``SAETrainer`` and save it as an inference SAE.

    The SAE is written to a temp folder beside ``out_dir`` and renamed to ``out_dir`` only when
    it is complete (weights, config and ``studio_training.json``, which also keeps ``run``: the
    store and run id that record it); an error removes the temp folder, a kill leaves it for the
    next training there to sweep. ``out_dir`` must pass ``check_sae_out``.

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
    if not (math.isfinite(lr) and lr > 0):
        raise StudioError(f"lr must be a positive finite number, got {lr}")
    out = check_sae_out(out_dir)
    if isinstance(activations, torch.Tensor):
        _check_chunk(activations, d_in)
    n_tokens, mean_norm, mean = _data_stats(activations, d_in)
    with _staging(out) as tmp:
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

        trained.save_inference_model(str(tmp))

        inference_sae = _load_sae_lens_folder(tmp, device=device)
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
            "run": run,
        }
        (tmp / TRAINING_INFO_FILENAME).write_text(json.dumps(training, indent=2))
    return result
