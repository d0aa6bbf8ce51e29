"""A worker's peak memory from the model's and SAEs' shapes alone (no download, no torch), the scan batch the fast
path would use, and what a job would download: what `synthact validate` prints.

Shapes come from the spec (toy), the checkpoint's config.json (local), or, for a pretrained name, the Hugging Face
cache's config.json of TransformerLens's official name, else TransformerLens's own offline table of configs (which
imports TransformerLens; `convert_hf_model_config` with local files only). Without either, the estimate says the
shape is known only once the config is downloaded. An SAE's width comes from its local cfg.json, the toy spec, or
a release id naming it (`width_16k`); a release SAE of unnamed width has no estimate.

The scan's batch rule lives here (`max_points`, used by `scan/fast.py`): on CUDA half the free device memory, at
most CUDA_MAX_POINTS points; on CPU a fixed budget.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CPU_MAX_POINTS = 4096  # largest batch of scan points on CPU
CPU_MEMORY_BUDGET = 512 * 2**20  # bytes a CPU chunk may use
CUDA_MAX_POINTS = 131072  # measured on an H200: 3% faster than 65536
CUDA_MEMORY_FRACTION = 0.5  # of the free device memory a chunk may use
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STATS_PROMPTS_PER_BATCH = 256  # generation/stats.py encodes this many prompts' positions at once
GPU_SIZES_GIB = (24, 40, 80, 141)  # cards the estimate is stated for when no GPU is visible here
GIB = 2**30
SLICE_ELEMENTS = 2**21  # weight entries the local loader processes at once (inputs/processing.py)
PROCESSING_COPIES = 4  # float32 copies TransformerLens's processing makes of what it is handed


def bytes_per_point(d_model: int, d_mlp: int, n_heads: int, d_vocab: int, n_read: int, n_ctx: int, js: bool) -> int:
    """A generous estimate of the device memory one scan point needs during a chunk of the fast path."""
    per = 4 * (16 * d_model + 5 * d_mlp + 4 * n_heads * (n_ctx + 1) + n_read)
    return per + (48 * d_vocab if js else 0)  # logits and the JS temporaries


def max_points(per_point: int, free_bytes: int | None) -> int:
    """Scan points per chunk: from free device memory on CUDA (`free_bytes`), a fixed budget on CPU (None)."""
    if free_bytes is not None:
        return max(2, min(CUDA_MAX_POINTS, int(free_bytes * CUDA_MEMORY_FRACTION) // per_point))
    return max(2, min(CPU_MAX_POINTS, CPU_MEMORY_BUDGET // per_point))


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a model: its widths, depth, vocabulary, and whether its checkpoint ties the
    embeddings (TransformerLens always holds the unembedding apart)."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_vocab: int
    n_positions: int  # learned positional embeddings (0 for rotary)
    gated: bool
    tied: bool
    source: str  # where the shape was read

    def block_params(self) -> int:
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = self.d_model * self.d_mlp * (3 if self.gated else 2)
        return attn + mlp + (self.n_heads + 2 * self.n_kv_heads) * self.d_head + self.d_mlp + 6 * self.d_model

    def params(self) -> int:
        """Parameters of the HookedTransformer (embedding and unembedding apart)."""
        return self.n_layers * self.block_params() + (2 * self.d_vocab + self.n_positions) * self.d_model + self.d_vocab

    def checkpoint_params(self) -> int:
        """Parameters of the checkpoint (one embedding matrix when tied)."""
        return self.params() - (self.d_vocab * self.d_model if self.tied else 0)


@dataclass
class WorkerEstimate:
    """One (model, SAE) group's worker: its memory, in bytes, and the scan batch."""

    model: str
    sae: str
    device: str  # the job's: cpu, cuda[:N] or auto
    notes: list[str] = field(default_factory=list)
    weights: int | None = None  # the model's parameters, in the precision they load in
    saes: int | None = None  # every layer's SAE, float32
    statistics: int | None = None  # the reference pool and one encoding batch
    per_point: int | None = None
    host_peak: int | None = None  # loading: weights plus the loader's temporaries
    device_fixed: int | None = None  # weights + SAEs + statistics on the device

    def lines(self, host_bytes: int | None, gpu_bytes: list[tuple[str, int]]) -> list[str]:
        head = f"worker {self.model} + {self.sae} ({self.device})"
        if self.device_fixed is None:
            return [f"{head}: no estimate ({'; '.join(self.notes)})"]
        out = [f"{head}: weights {_gib(self.weights)}, SAEs {_gib(self.saes)}, reference statistics "
               f"{_gib(self.statistics)}; scan {self.per_point / 1024:.1f} KiB per point; loading peaks at "
               f"{_gib(self.host_peak)} of host memory" + (f" (this machine: {_gib(host_bytes)})" if host_bytes else "")]
        if self.device != "cpu":
            for name, total in gpu_bytes:
                free = total - self.device_fixed
                if free < 2 * self.per_point / CUDA_MEMORY_FRACTION:
                    out.append(f"  {name}: does not fit (needs {_gib(self.device_fixed)} before any scan point)")
                else:
                    out.append(f"  {name}: batch {max_points(self.per_point, free)} points, "
                               f"{_gib(self.device_fixed)} fixed")
        if self.device in ("cpu", "auto"):
            need = self.device_fixed + max_points(self.per_point, None) * self.per_point
            worst = max(need, self.host_peak)
            fits = host_bytes is None or worst <= host_bytes
            out.append(f"  CPU: batch {max_points(self.per_point, None)} points, peak about {_gib(worst)}"
                       + ("" if fits else f": does not fit in this machine's {_gib(host_bytes)}"))
        out += [f"  note: {n}" for n in self.notes]
        return out


def estimate(job) -> list[WorkerEstimate]:
    """One estimate per (model, SAE) group of `job` (a spec.Job)."""
    out = []
    for model in job.model:
        shape = model_shape(model)
        dtype = str(model.from_pretrained_kwargs.get("dtype", "float32")).removeprefix("torch.")
        for sae in job.sae:
            est = WorkerEstimate(model.label, sae.label, job.device)
            widths = [sae_width(sae, layer) for layer in job.layers]
            if isinstance(shape, str):
                est.notes.append(shape)
            unknown = [w for w in widths if isinstance(w, str)]
            est.notes += unknown[:1]
            if isinstance(shape, str) or unknown:
                out.append(est)
                continue
            n_read = max(len(job.read_layers), 1)
            est.weights = shape.params() * DTYPE_BYTES.get(dtype, 4)
            est.saes = sum(4 * (2 * shape.d_model * w + 2 * w + shape.d_model) for w in widths)
            pool = job.reference.n_prompts * shape.d_model * 4 + 3 * shape.d_model**2 * 8
            encode = STATS_PROMPTS_PER_BATCH * job.n_ctx * max(widths) * 4 * 2
            est.statistics = pool + encode
            est.per_point = bytes_per_point(shape.d_model, shape.d_mlp, shape.n_heads, shape.d_vocab, n_read,
                                            job.n_ctx, job.js)
            est.device_fixed = est.weights + est.saes + est.statistics
            attention = shape.d_model * shape.d_head * (2 * shape.n_heads + 2 * shape.n_kv_heads)
            est.host_peak = est.weights + 4 * PROCESSING_COPIES * max(attention, 3 * SLICE_ELEMENTS)
            if model.pretrained:  # transformers maps the downloaded files: their pages count while it reads them
                est.host_peak += shape.checkpoint_params() * 4
                est.notes.append("a pretrained name is read by transformers from memory-mapped files (counted here "
                                 "as float32, the precision most hub checkpoints are stored in); their pages are "
                                 "the page cache's, freed once loading ends")
            out.append(est)
    return out


def report(job) -> str:
    """The lines `synthact validate` prints: per worker memory and batch, then what the job would download."""
    estimates = estimate(job)
    host = _host_memory()
    gpus = _visible_gpus() or [(f"{g} GiB GPU", g * GIB) for g in GPU_SIZES_GIB]
    lines = ["memory (estimated from shapes; docs/benchmarks.md, \"Model memory\"):"]
    for est in estimates:
        lines += ["  " + line for line in est.lines(host, gpus)]
    downloads = _downloads(job)
    if downloads:
        lines.append("downloads (from the Hugging Face hub, unless already in its local cache):")
        lines += [f"  {d}" for d in downloads]
    return "\n".join(lines)


# --------------------------------------------------------------------------- shapes


def model_shape(spec) -> ModelShape | str:
    """The shape of a spec.ModelSpec's model, or why it is unknown without a download."""
    if spec.toy:
        t = spec.toy
        return ModelShape(t.n_layers, t.d_model, t.d_mlp, t.n_heads, t.d_model // t.n_heads, t.n_heads, t.d_vocab,
                          t.n_ctx, False, False, "toy spec")
    if spec.local:
        config = Path(spec.local).expanduser() / "config.json"
        if not config.is_file():
            return f"no config.json in '{config.parent}'"
        return _from_hf_config(json.loads(config.read_text()), str(config))
    official = _official_name(spec.pretrained)
    cached = _cached_file(official, "config.json")
    if cached:
        return _from_hf_config(json.loads(Path(cached).read_text()), f"the Hugging Face cache ({official})")
    unknown = (f"the shape of '{spec.pretrained}' is known only once its config.json is downloaded (it is not in "
               "the Hugging Face cache nor in TransformerLens's offline table)")
    if not any(word in official.lower() for word in _offline_table_words()):
        return unknown
    try:
        from transformer_lens import loading_from_pretrained as loading

        cfg = loading.convert_hf_model_config(official, local_files_only=True)
    except Exception:  # not in TransformerLens's offline table and not cached: any error says the same
        return unknown
    return ModelShape(cfg["n_layers"], cfg["d_model"], cfg["d_mlp"], cfg["n_heads"], cfg["d_head"],
                      cfg.get("n_key_value_heads") or cfg["n_heads"], cfg["d_vocab"],
                      cfg["n_ctx"] if cfg.get("positional_embedding_type", "standard") == "standard" else 0,
                      bool(cfg.get("gated_mlp")), True, f"TransformerLens's offline table ({official})")


def _from_hf_config(c: dict, source: str) -> ModelShape:
    """A shape from a Hugging Face config.json (the families model.local reads)."""
    d = c.get("hidden_size") or c["n_embd"]
    heads = c.get("num_attention_heads") or c["n_head"]
    gpt2 = "n_embd" in c
    gated = not gpt2 and c.get("model_type") != "gpt_neox"
    return ModelShape(
        n_layers=c.get("num_hidden_layers") or c["n_layer"], d_model=d,
        d_mlp=(c.get("n_inner") or 4 * d) if gpt2 else c["intermediate_size"], n_heads=heads,
        d_head=c.get("head_dim") or d // heads, n_kv_heads=c.get("num_key_value_heads") or heads,
        d_vocab=c["vocab_size"], n_positions=c.get("n_positions", 0) if gpt2 else 0, gated=gated,
        tied=c.get("tie_word_embeddings", True), source=source,
    )


def sae_width(spec, layer: int) -> int | str:
    """d_sae of a spec.SAESpec's SAE for `layer`, or why it is unknown without a download."""
    if spec.toy:
        return spec.toy.d_sae
    if spec.local:
        cfg = Path(spec.local.format(layer=layer)).expanduser() / "cfg.json"
        return json.loads(cfg.read_text())["d_sae"] if cfg.is_file() else f"no cfg.json in '{cfg.parent}'"
    sae_id = spec.id.format(layer=layer)
    match = re.search(r"width[_-](\d+)([km]?)", sae_id, re.IGNORECASE)
    if match:
        return int(match.group(1)) * {"": 1, "k": 1024, "m": 2**20}[match.group(2).lower()]
    return f"the width of SAE '{sae_id}' of release '{spec.release}' is known only once it is downloaded"


# --------------------------------------------------------------------------- downloads and this machine


def _downloads(job) -> list[str]:
    out = []
    for model in job.model:
        if model.pretrained:
            official = _official_name(model.pretrained)
            shape = model_shape(model)
            size = "" if isinstance(shape, str) else f", {shape.checkpoint_params() / 1e9:.2f}B parameters"
            cached = " (config in the local cache)" if _cached_file(official, "config.json") else ""
            out.append(f"model {official} (TransformerLens name '{model.pretrained}'{size}){cached}")
    releases = _sae_releases(sae.release for sae in job.sae if sae.release)
    for sae in job.sae:
        if sae.release:
            entry = releases.get(sae.release, {})
            paths = {s["id"]: s["path"] for s in entry.get("saes", [])}
            for layer in job.layers:
                sae_id = sae.id.format(layer=layer)
                where = f"{entry['repo_id']}/{paths[sae_id]}" if sae_id in paths else "unknown to this sae_lens"
                width = sae_width(sae, layer)
                out.append(f"SAE {sae.release}/{sae_id}: {where}"
                           + (f", d_sae {width}" if isinstance(width, int) else ""))
    corpus = job.corpus
    if corpus.hf:
        out.append(f"corpus {corpus.hf} (split {corpus.split}, column {corpus.column}, the first "
                   f"{corpus.max_docs} documents, streamed)")
    return out


def _official_name(name: str) -> str:
    """TransformerLens's official (Hugging Face) name for a model name or alias, read from its table of names
    (a file of plain literals, read without importing TransformerLens); the name itself if unknown."""
    table = _transformer_lens_names()
    lower = name.lower()
    for official, aliases in table.items():
        if lower == official.lower() or lower in (a.lower() for a in aliases):
            return official
    return name


def _transformer_lens_names() -> dict:
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "supported_models.py"
    loaded = importlib.util.spec_from_file_location("_synthact_tl_names", path)
    module = importlib.util.module_from_spec(loaded)
    try:
        loaded.loader.exec_module(module)
    except Exception:  # a TransformerLens whose table moved: names stay as given
        return {}
    aliases = getattr(module, "MODEL_ALIASES", {})
    return {name: aliases.get(name, []) for name in getattr(module, "OFFICIAL_MODEL_NAMES", [])}


def _offline_table_words() -> set[str]:
    """The words by which TransformerLens's `convert_hf_model_config` recognises a model from its name alone, with
    no config download (its first if/elif chain: `"gemma-2-" in official_model_name.lower()`, ...); read from its
    source without importing it, so only those names pay for importing TransformerLens."""
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return set()
    source = Path(list(spec.submodule_search_locations)[0]) / "loading_from_pretrained.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return set()
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "convert_hf_model_config":
            chain = next((n for n in node.body if isinstance(n, ast.If) and any(
                isinstance(t, ast.Name) and t.id == "architecture"
                for st in n.body if isinstance(st, ast.Assign) for t in st.targets)), None)
            while isinstance(chain, ast.If):
                words |= {c.left.value.lower() for c in ast.walk(chain.test) if isinstance(c, ast.Compare)
                          and isinstance(c.left, ast.Constant) and isinstance(c.left.value, str)}
                chain = chain.orelse[0] if len(chain.orelse) == 1 else None
    return words


def _sae_releases(names) -> dict:
    """The named releases' entries of sae_lens's table (its YAML file, read without importing sae_lens, and only
    the named releases' blocks of it: the file is large)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    if not path.is_file():
        return {}
    import yaml

    wanted, blocks, current = set(names), {}, None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace():
            current = line.rstrip(":") if line.rstrip(":") in wanted else None
        if current is not None:
            blocks.setdefault(current, []).append(line)
    return {name: (yaml.safe_load("\n".join(lines)) or {}).get(name, {}) for name, lines in blocks.items()}


def _cached_file(repo: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
    except Exception:  # a malformed repo name or cache: not cached
        return None
    return found if isinstance(found, str) else None


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _visible_gpus() -> list[tuple[str, int]]:
    """(name, total bytes) of the GPUs nvidia-smi lists here; [] without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if mib.strip().isdigit():
            gpus.append((f"{name.strip()} (this machine)", int(mib) * 2**20))
    return gpus


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.2f} GiB"
