"""Reference statistics: a pool of real activations and everything the kinds draw from.

One `ReferenceStats` per (model, SAE, layer, corpus, n_ctx, reference spec, seed): the pool's
activations at the SAE's hook (last position), their SAE codes, latent firing frequencies,
per-latent non-zero value samples, L0s, norms, and a Gaussian fit.

Firing frequencies (what frequency matching reads) come from the SAE release's own feature
sparsity where sae_lens provides it (`freq_source` "sae_lens", as the authors did; latents with
log10 sparsity <= -10 count as dead, as in their notebooks), else from every token position of
the pool's prompts (`freq_source` "pool_all_positions").
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from synthact.errors import SynthactError
from synthact.generation import codes
from synthact.inputs.hooks import stream_index
from synthact.integrity import record_problem
from synthact.layout import build_dir_once
from synthact.spec import ReferenceSpec, derive_seed, digest

FORMAT_VERSION = 3  # 3: value samples stored sparse (CSR by latent), no [d_sae, V] matrix
DEAD_LOG_SPARSITY = -10.0  # the authors' cut: latents at or below this log10 density are dead
# Decoders that rescale by statistics of the input are not a fixed affine map: a code alone
# cannot be decoded, so SAE-built activations are impossible with them.
NON_AFFINE_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")


@dataclass
class ReferenceStats:
    """A pool of P real activations at one layer and the statistics derived from it."""

    layer: int
    acts: torch.Tensor  # [P, d_model] float32
    code_offsets: torch.Tensor  # [P + 1] int64, CSR row pointers into code_latents / code_values
    code_latents: torch.Tensor  # [nnz] int32
    code_values: torch.Tensor  # [nnz] float32
    freq: torch.Tensor  # [d_sae] float64, firing frequency of each latent (see freq_source); 0 = dead
    value_samples: torch.Tensor  # [sum of value_counts] float32: up to V non-zero values per latent, by latent (CSR)
    value_counts: torch.Tensor  # [d_sae] int64: latent j's are value_samples[value_offsets[j]:][:value_counts[j]]
    l0: torch.Tensor  # [P] int64
    mean: torch.Tensor  # [d_model] float64
    cov: torch.Tensor  # [d_model, d_model] float64, positive definite (jitter added if needed)
    chol: torch.Tensor  # [d_model, d_model] float64, lower Cholesky factor of cov
    norms: torch.Tensor  # [P] float32, ||activation||
    code_norms: torch.Tensor  # [P] float32, ||z @ W_dec||
    cov_jitter: float = 0.0  # what was added to cov's diagonal to make it positive definite
    freq_source: str = "pool_all_positions"  # or "sae_lens": the release's own feature sparsity

    @property
    def n(self) -> int:
        return self.acts.shape[0]

    @property
    def d_sae(self) -> int:
        return self.freq.shape[0]

    @functools.cached_property
    def value_offsets(self) -> torch.Tensor:
        """[d_sae] int64 where each latent's value samples start in `value_samples`."""
        return torch.cumsum(self.value_counts, 0) - self.value_counts

    @functools.cached_property
    def alive(self) -> torch.Tensor:
        """int64 ids of latents that fired at least once in the pool, ascending."""
        return torch.nonzero(self.freq > 0).flatten()

    @functools.cached_property
    def alive_by_log_freq(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alive ids sorted by log10 frequency, those log10 frequencies): the frequency-matching table."""
        logf = torch.log10(self.freq[self.alive])
        order = torch.argsort(logf, stable=True)
        return self.alive[order], logf[order]

    def code(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Latent ids and values of pool code i."""
        a, b = int(self.code_offsets[i]), int(self.code_offsets[i + 1])
        return self.code_latents[a:b].cpu().numpy(), self.code_values[a:b].cpu().numpy()

    def summary(self) -> dict:
        """Headline numbers (JSON-able): pool size, L0, alive latents, norms."""
        l0 = self.l0.double()
        return {
            "layer": self.layer,
            "n": self.n,
            "d_model": int(self.acts.shape[1]),
            "d_sae": self.d_sae,
            "mean_l0": float(l0.mean()),
            "median_l0": float(l0.median()),
            "frac_l0_zero": float((self.l0 == 0).double().mean()),
            "alive_latents": int(self.alive.numel()),
            "mean_norm": float(self.norms.double().mean()),
            "std_norm": float(self.norms.double().std()),
            "mean_code_norm": float(self.code_norms.double().mean()),
            "value_samples_per_latent": int(self.value_counts.max()) if self.d_sae else 0,
            "cov_jitter": self.cov_jitter,
            "freq_source": self.freq_source,
        }

    def save(self, directory: Path) -> None:
        """Write tensors.safetensors + stats.json and their record.json atomically (temp directory, then rename).

        If `directory` already exists (another worker finished first), it is kept as is:
        statistics are deterministic, so both copies are the same.
        """
        tensors = {
            f.name: getattr(self, f.name).detach().cpu().contiguous()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        meta = {"format_version": FORMAT_VERSION, "layer": self.layer, "cov_jitter": self.cov_jitter,
                "freq_source": self.freq_source}

        def write(tmp: Path) -> None:
            save_file(tensors, tmp / "tensors.safetensors")
            (tmp / "stats.json").write_text(json.dumps({**meta, "summary": self.summary()}, indent=2))

        build_dir_once(Path(directory), write)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> "ReferenceStats":
        """Read a statistics directory; a SynthactError naming the damage when it is incomplete, its files are not
        the ones its record.json lists (statistics saved before records existed have none: they are recomputed
        too), or it is unreadable or inconsistent (`load_or_compute_stats` then recomputes it)."""
        directory = Path(directory)
        if not ((directory / "stats.json").is_file() and (directory / "tensors.safetensors").is_file()):
            raise SynthactError(f"'{directory}' is not a reference-statistics directory (stats.json and "
                                "tensors.safetensors expected)")
        if problem := record_problem(directory):  # every byte as recorded when saved (integrity rule)
            raise SynthactError(f"'{directory}' holds damaged statistics ({problem})")
        try:
            meta = json.loads((directory / "stats.json").read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {meta.get('format_version')}, this synthact reads {FORMAT_VERSION}")
            tensors = load_file(directory / "tensors.safetensors", device=str(device))
            stats = cls(layer=int(meta["layer"]), cov_jitter=float(meta["cov_jitter"]),
                        freq_source=str(meta["freq_source"]), **tensors)
        except Exception as e:  # OSError, JSON, safetensors and missing-field errors come in many types
            raise SynthactError(f"'{directory}' holds damaged statistics ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        problem = stats.problem()
        if problem:
            raise SynthactError(f"'{directory}' holds damaged statistics ({problem})")
        return stats

    def problem(self) -> str | None:
        """Why these tensors cannot be one pool's statistics (shapes disagree, values not finite), or None."""
        p, d_model, d_sae = self.acts.shape[0], self.acts.shape[-1], self.freq.shape[0]
        nnz = self.code_latents.shape[0]
        shapes = {"acts": (p, d_model), "code_offsets": (p + 1,), "code_values": (nnz,), "freq": (d_sae,),
                  "value_counts": (d_sae,), "l0": (p,), "mean": (d_model,), "cov": (d_model, d_model),
                  "chol": (d_model, d_model), "norms": (p,), "code_norms": (p,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                return f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
        if tuple(self.value_samples.shape) != (int(self.value_counts.sum()),):
            return f"value_samples has shape {tuple(self.value_samples.shape)}, expected ({int(self.value_counts.sum())},)"
        if int(self.code_offsets[-1]) != nnz:
            return f"code_offsets end at {int(self.code_offsets[-1])}, but there are {nnz} code entries"
        for name in ("acts", "freq", "mean", "cov", "chol"):
            if not torch.isfinite(getattr(self, name)).all():
                return f"{name} holds NaN or infinite values"
        return None


def stats_key(
    model_label: str, sae_label: str, layer: int, corpus_label: str, n_ctx: int, spec: ReferenceSpec, seed: int,
    sae_sparsity: bool = False,
) -> str:
    """Short digest naming the statistics directory of one (model, SAE, layer, corpus, n_ctx, spec, seed, and
    whether frequencies come from the SAE release's sparsity)."""
    parts = {
        "format_version": FORMAT_VERSION,
        "model": model_label,
        "sae": sae_label,
        "layer": layer,
        "corpus": corpus_label,
        "n_ctx": n_ctx,
        "reference": spec.model_dump(mode="json"),
        "seed": seed,
        "sae_sparsity": sae_sparsity,
    }
    return f"L{layer}-{digest(parts)[:16]}"


def check_affine_decoder(sae) -> None:
    """Refuse SAEs whose decoder depends on the input (codes alone cannot be decoded)."""
    norm = getattr(sae.cfg, "normalize_activations", "none")
    if norm in NON_AFFINE_NORMALIZATIONS:
        raise SynthactError(
            f"the SAE normalises activations with '{norm}', so its decoder depends on the input and a "
            "sparse code alone cannot be decoded; SAE-built kinds (synthetic_*, single_latent) need an SAE "
            "with normalize_activations 'none' or 'expected_average_only_in' (fold the scaling into the weights)"
        )


@torch.no_grad()
def compute_stats(
    model,
    sae,
    corpus,
    layer: int,
    n_ctx: int,
    spec: ReferenceSpec,
    seed: int,
    device: str,
    batch_size: int = 256,
    log_sparsity: torch.Tensor | None = None,
    budget: int | None = None,
) -> ReferenceStats:
    """Sample `spec.n_prompts` prompts, run model + SAE on them, and derive the pool's statistics;
    `log_sparsity` [d_sae] (log10 feature density, e.g. from `SAE.from_pretrained_with_cfg_and_sparsity`)
    gives the firing frequencies when the SAE release has it.

    The model runs `batch_size` prompts at a time; the SAE encodes at most `codes.batch_rows(d_sae, budget)`
    activations at a time (every position, then the last ones), so no dense code beyond one batch of `budget`
    bytes (default codes.ENCODE_BUDGET_BYTES) exists; the pool's codes are kept sparse (CSR)."""
    check_affine_decoder(sae)
    rng = np.random.default_rng(derive_seed("reference", seed, layer))
    _, _, tokens = corpus.sample(rng, spec.n_prompts, n_ctx)
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=device)
    w_dec = sae.W_dec
    rows = codes.batch_rows(w_dec.shape[0], budget)
    acts, parts, code_norms = [], [], []
    fired = torch.zeros(w_dec.shape[0], dtype=torch.float64, device=w_dec.device)
    for start in range(0, tokens.shape[0], batch_size):
        everywhere = _all_positions(model, tokens[start : start + batch_size], stream_index(sae, layer))
        flat = everywhere.flatten(0, 1).to(w_dec.dtype)
        for i in range(0, flat.shape[0], rows):
            fired += torch.bincount(torch.nonzero(sae.encode(flat[i : i + rows]))[:, 1],
                                    minlength=w_dec.shape[0]).double()
        x = everywhere[:, -1]
        for i in range(0, x.shape[0], rows):
            z = sae.encode(x[i : i + rows].to(w_dec.dtype))
            parts.append(codes.sparse(z))
            code_norms.append((z @ w_dec).float().norm(dim=-1))
        acts.append(x)
    acts_t = torch.cat(acts)
    pool = codes.concat(parts)
    lat_t, val_t = pool.latents, pool.values
    n, d_sae = acts_t.shape[0], w_dec.shape[0]
    l0 = pool.l0
    offsets = pool.offsets.to(acts_t.device)
    if log_sparsity is None:
        freq, source = fired.to(acts_t.device) / (n * tokens.shape[1]), "pool_all_positions"
    else:
        log_sparsity = log_sparsity.double().to(acts_t.device)
        freq, source = torch.where(log_sparsity > DEAD_LOG_SPARSITY, 10.0**log_sparsity, 0.0), "sae_lens"
    samples, sample_counts = _value_samples(lat_t.cpu().numpy(), val_t.cpu().numpy(), d_sae, spec.value_samples, rng)
    mean, cov, chol, jitter = _gaussian_fit(acts_t)
    return ReferenceStats(
        layer=layer,
        acts=acts_t,
        code_offsets=offsets,
        code_latents=lat_t.to(torch.int32),
        code_values=val_t,
        freq=freq,
        value_samples=torch.from_numpy(samples).to(acts_t.device),
        value_counts=torch.from_numpy(sample_counts).to(acts_t.device),
        l0=l0,
        mean=mean,
        cov=cov,
        chol=chol,
        norms=acts_t.norm(dim=-1),
        code_norms=torch.cat(code_norms),
        cov_jitter=jitter,
        freq_source=source,
    )


@torch.no_grad()
def _all_positions(model, tokens: torch.Tensor, layer: int, batch_size: int = 64) -> torch.Tensor:
    """The residual stream entering block `layer` at every position, float32 [B, n_ctx, d_model]."""
    return torch.cat([model(tokens[i : i + batch_size], stop_at_layer=layer).float()
                      for i in range(0, tokens.shape[0], batch_size)])


def _value_samples(
    latents: np.ndarray, values: np.ndarray, d_sae: int, per_latent: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_latent` non-zero values per latent, a uniform random subset where there are more: (the kept values
    by latent, flat; how many each latent kept)."""
    order = np.lexsort((rng.random(latents.shape[0]), latents))
    lat, val = latents[order], values[order]
    starts = np.searchsorted(lat, np.arange(d_sae))
    rank = np.arange(lat.shape[0]) - starts[lat]
    keep = rank < per_latent
    counts = np.minimum(np.bincount(lat, minlength=d_sae), per_latent).astype(np.int64)
    return np.ascontiguousarray(val[keep], dtype=np.float32), counts


def _gaussian_fit(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mean, covariance and its Cholesky factor (float64); jitter on the diagonal until positive definite."""
    x = acts.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)
    scale = float(cov.diagonal().mean()) or 1.0
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    for jitter in [0.0, *(scale * 10.0**e for e in range(-10, 1))]:
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return mean, cov + jitter * eye, chol, jitter
    raise SynthactError(
        "the covariance of the reference activations could not be made positive definite; the pool is "
        "degenerate (constant or non-finite activations?); check the model and increase reference.n_prompts"
    )


def load_stored_stats(fs, path: str, device: str = "cpu") -> ReferenceStats:
    """A statistics directory on any pyarrow filesystem (copied locally first when remote); SynthactError when damaged."""
    import tempfile

    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        return ReferenceStats.load(Path(path), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        except OSError as e:
            raise SynthactError(f"cannot copy '{path}': {e}") from None
        return ReferenceStats.load(Path(tmp), device=device)


def discard_stats(fs, path: str) -> None:
    """Remove a damaged statistics directory (moved aside first, so no reader sees it half deleted)."""
    import uuid

    parent, _, name = path.rstrip("/").rpartition("/")
    aside = f"{parent}/.damaged-{uuid.uuid4().hex[:8]}-{name}"
    try:
        fs.move(path, aside)
        fs.delete_dir(aside)
    except OSError:
        pass  # another worker moved it first


def load_or_compute_stats(backend, layer: int, job, stats_root: str, device: str) -> tuple[ReferenceStats, str]:
    """A layer's reference statistics from `stats_root` (a path or URI), computed and stored once if missing,
    and recomputed when the stored copy is damaged.

    Returns the statistics and where they live. A full disk or unwritable store is a SynthactError.
    """
    import tempfile

    import pyarrow.fs as pafs

    from synthact.layout import is_disk_full, join, resolve_location

    log_sparsity = getattr(backend.saes[layer], "log_sparsity", None)  # the release's own, where loaded
    key = stats_key(backend.model.label, backend.saes[layer].label, layer, backend.corpus.label, job.n_ctx,
                    job.reference, job.seed, sae_sparsity=log_sparsity is not None)
    uri = join(stats_root, key)  # before a URI's query string
    fs, path, _ = resolve_location(uri)
    local = isinstance(fs, pafs.LocalFileSystem)
    if fs.get_file_info(path).type == pafs.FileType.Directory:  # saved atomically, but files can be damaged later
        try:
            stats = load_stored_stats(fs, path, device)
            if stats.d_sae == backend.saes[layer].d_sae and stats.acts.shape[1] == backend.model.d_model:
                return stats, uri
            problem = f"{stats.d_sae} latents of width {stats.acts.shape[1]}, not this SAE's"
        except SynthactError as e:
            problem = str(e)
        print(f"synthact: reference statistics in '{uri}' are damaged ({problem}); recomputing them", file=sys.stderr)
        discard_stats(fs, path)
    stats = compute_stats(backend.model.model, backend.saes[layer].sae, backend.corpus, layer, job.n_ctx,
                          job.reference, job.seed, device, log_sparsity=log_sparsity)
    try:
        if local:
            stats.save(Path(path))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                stats.save(Path(tmp) / "stats")
                pafs.copy_files(str(Path(tmp) / "stats"), path, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)
    except Exception as e:  # OSError, or safetensors' own error type for the same failed write
        full = isinstance(e, OSError) and is_disk_full(e) or "No space left" in str(e)
        if not full and not isinstance(e, OSError):
            raise
        raise SynthactError(
            f"{'the disk under' if full else 'cannot write to'} '{stats_root}' "
            f"{'is full' if full else f'({e})'} while saving reference statistics; "
            f"{'free space' if full else 'use a writable --out'} and rerun the same command (finished shards are kept)"
        ) from None
    return stats, uri


# --------------------------------------------------------------------------- the pool's two parts (the ladder)

POOL_PARTS = ("statistics", "heldout")


def split_pool(n: int, holdout: float) -> int:
    """Codes of a pool of n that build statistics (the first ones); the last round(holdout * n) are held out."""
    if not 0 <= holdout < 1:
        raise SynthactError(f"holdout {holdout} must be a fraction in [0, 1)")
    return n - int(round(holdout * n))


def part_range(n: int, holdout: float, part: str) -> tuple[int, int]:
    """[start, stop) of the pool's codes in `part`: "statistics" (the first ones: what the ladder's constructions
    draw from) or "heldout" (the last round(holdout * n): what the diagnostics count against)."""
    if part not in POOL_PARTS:
        raise SynthactError(f"unknown part of the pool '{part}'; use one of {', '.join(POOL_PARTS)}")
    cut = split_pool(n, holdout)
    return (0, cut) if part == "statistics" else (cut, n)
