"""from_pretrained's weight processing, piece by piece, into a HookedTransformer without a second copy of the weights.

TransformerLens processes a whole state dict at once (fold_ln, center_writing_weights, center_unembed,
fold_value_biases), and to keep precision it first upcasts every tensor to float32 and clones it: about three
float32 copies of a model that is bf16 on disk (15 GB for a 1.4 GB checkpoint, measured). Every one of those
steps acts within one block, or within one vocabulary entry's row of the embedding and column of the unembedding
(centering the unembedding over the vocabulary aside), so `assemble` hands TransformerLens's own
`ProcessWeights.process_weights` one piece at a time: each block's attention in two pieces and its MLP in
slices (with small stand-ins for the embeddings, which its checks want present), then the vocabulary in
slices; and centres the unembedding itself
over the whole vocabulary, as `ProcessWeights.center_unembed` does. Each processed piece becomes the model's
parameters in the checkpoint's precision before the next is processed, written over the converted tensors where
they own their memory, and the piece's float32 temporaries are handed back to the system before the next piece
(glibc would otherwise keep them, and the peak would grow piece by piece). tests/inputs/test_families.py checks
the result against TransformerLens's whole-model processing for every family.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from synthact.inputs.memory import SLICE_ELEMENTS  # weight entries processed at once (8 MB in float32)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.weight_processing import ProcessWeights

_VOCAB_KEYS = ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U", "ln_final.w", "ln_final.b")


@torch.no_grad()
def assemble(cfg, state: dict[str, torch.Tensor], processing: dict, vocab_slice: int | None = None) -> HookedTransformer:
    """A HookedTransformer of `cfg` whose parameters are `state` processed with `processing` (from_pretrained's
    flags). `state` is consumed: its tensors are dropped as their processed versions take their place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, move_to_device=False)  # empty parameters: no memory touched yet
    state = loading.fill_missing_keys(model, state)
    flags = dict(processing)
    center_unembed = flags.pop("center_unembed", False)
    assigned = set()
    for layer in range(cfg.n_layers):
        prefix = f"blocks.{layer}."
        block = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        out, others = {}, block | state  # a tensor is written over only where no other entry shares its memory
        for piece, narrowed, where, changes in _block_pieces(cfg, layer, block, out, flags):
            done = _process({f"blocks.0.{k}": v for k, v in piece.items()} | _stand_ins(cfg), narrowed,
                            flags | changes)
            for name in piece:
                value, source = done[f"blocks.0.{name}"], block[name]
                whole = where.get(name) is ...
                if name not in where or (whole and not (_owned(source, others) and _same_form(value, source))):
                    out[name] = value
                    continue
                if name not in out:  # written over its input where that owns its memory alone: no second copy
                    out[name] = source if _owned(source, others) else torch.empty_like(source)
                out[name][where[name]] = value
            del done, piece
            _release_freed_memory()  # the piece's float32 temporaries go back now, not after the whole model
        del block, others
        assigned |= _assign(model, {prefix + k: v for k, v in out.items()})
    vocab_slice = vocab_slice or max(SLICE_ELEMENTS // cfg.d_model, 2)
    assigned |= _assign(model, _vocabulary(cfg, state, flags, center_unembed, vocab_slice))
    assigned |= _assign(model, {k: state.pop(k) for k in list(state)})  # anything left: kept as converted
    unset = sorted(set(dict(model.named_parameters())) - assigned)
    if unset:  # a converter that left a parameter out: never run a model with uninitialised weights
        raise RuntimeError(f"the converted checkpoint gave no value for {', '.join(unset[:8])}")
    _release_freed_memory()
    return model


def _release_freed_memory() -> None:
    """Hand the memory the pieces' temporaries used back to the system (glibc keeps freed heap memory otherwise)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _block_pieces(cfg, layer: int, block: dict, out: dict, flags: dict):
    """(piece, its cfg, where each tensor's processed value goes: a slice, or ... for a tensor no later piece reads,
    changes to the flags) for one block, each piece made once the one before is processed (`out`: what they gave).

    The attention comes in two pieces: the queries, keys and values with ln1 (folding ln1 into them; the value
    biases come out in float32), then the output weights and bias (centring them, folding those value biases
    into the bias), the order TransformerLens's steps take. The MLP follows in slices along d_mlp (each folding
    and centring step acts within a hidden unit's column of W_in/W_gate and row of W_out; every slice reads ln2).
    A parallel block (its MLP folds ln1, which its attention needs too) or one whose attention matrices are
    refactored together is one piece."""
    one = _narrowed(cfg, n_layers=1, layer=layer)
    mlp = {k for k in block if k.startswith(("mlp.", "ln2."))}
    if cfg.parallel_attn_mlp or "mlp.W_in" not in block or flags.get("refactor_factored_attn_matrices"):
        yield dict(block), one, dict.fromkeys(block, ...), {}
        return
    output = {k for k in ("attn.W_O", "attn.b_O") if k in block}
    b_v = next((k for k in ("attn._b_V", "attn.b_V") if k in block), None)
    first = {k: v for k, v in block.items() if k not in mlp and k not in output}
    if output and b_v:
        first[b_v] = block[b_v].float()  # kept float32 by the processing, as in the whole model's, for the fold
    yield first, one, dict.fromkeys(first, ...), {"fold_value_biases": False} if output else {}
    if output:
        second = {k: block[k] for k in output} | ({b_v: out[b_v]} if b_v else {})
        yield second, one, dict.fromkeys(second, ...), {"fold_ln": False}
    for cols in _slices(block["mlp.W_in"].shape[1], max(SLICE_ELEMENTS // cfg.d_model, 2), cfg.d_model):
        where = {k: (slice(None), cols) for k in ("mlp.W_in", "mlp.W_gate") if k in block}
        where.update({k: cols for k in ("mlp.b_in", "mlp.W_out") if k in block})
        piece = {k: block[k][index] for k, index in where.items()}
        piece.update({k: block[k] for k in mlp if k.startswith("ln2.") or (k == "mlp.b_out" and cols.start == 0)})
        yield piece, dataclasses.replace(one, d_mlp=cols.stop - cols.start), where, {}


def _slices(n: int, step: int, avoid: int) -> list[slice]:
    """Slices covering range(n) by `step`, none `avoid` wide (TransformerLens reads a weight whose width is d_model
    as transposed)."""
    step = step + (step == avoid)
    if n % step == avoid:
        step += 1
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _process(piece: dict, cfg, flags: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ProcessWeights.process_weights(piece, cfg, center_unembed=False, **flags)


def _narrowed(cfg, n_layers: int, layer: int = 0, d_vocab: int | None = None):
    """`cfg` for one piece: `n_layers` blocks (block `layer`'s attention type) and `d_vocab` entries."""
    changes = {"n_layers": n_layers}
    if getattr(cfg, "attn_types", None):
        changes["attn_types"] = cfg.attn_types[layer : layer + n_layers]
    if d_vocab is not None:
        changes.update(d_vocab=d_vocab, d_vocab_out=d_vocab)
    return dataclasses.replace(cfg, **changes)


def _stand_ins(cfg) -> dict:
    """One-entry embeddings a block's piece carries because the centering step expects them (then discarded)."""
    out = {"embed.W_E": torch.zeros(1, cfg.d_model, dtype=cfg.dtype)}
    if cfg.positional_embedding_type == "standard":
        out["pos_embed.W_pos"] = torch.zeros(1, cfg.d_model, dtype=cfg.dtype)
    return out


def _vocabulary(cfg, state: dict, flags: dict, center_unembed: bool, vocab_slice: int) -> dict:
    """The embeddings, the unembedding and the final norm, processed in slices of the vocabulary, each slice
    written over its input where that tensor owns its memory alone; then, with `center_unembed`, the unembedding
    centred over the whole vocabulary as `ProcessWeights.center_unembed` does."""
    parts = {k: state.pop(k) for k in _VOCAB_KEYS if k in state}
    if "embed.W_E" not in parts:
        return parts
    vocab = parts["embed.W_E"].shape[0]
    slices = _slices(vocab, vocab_slice, cfg.d_model)
    sliced = {"embed.W_E": lambda c: (c, slice(None)), "unembed.W_U": lambda c: (slice(None), c),
              "unembed.b_U": lambda c: c}
    out = {k: parts[k] if _owned(parts[k], parts) else torch.empty_like(parts[k]) for k in sliced if k in parts}
    for n, cols in enumerate(slices):
        piece = {k: parts[k][sliced[k](cols)] for k in sliced.keys() & parts.keys()}
        piece.update({k: parts[k] for k in ("ln_final.w", "ln_final.b") if k in parts})
        if "pos_embed.W_pos" in parts:
            piece["pos_embed.W_pos"] = parts["pos_embed.W_pos"] if n == 0 else _stand_ins(cfg)["pos_embed.W_pos"]
        done = _process(piece, _narrowed(cfg, n_layers=0, d_vocab=cols.stop - cols.start), flags)
        for k in sliced.keys() & parts.keys():
            out[k][sliced[k](cols)] = done[k]
        if n == 0:
            whole = {k: done[k] for k in ("pos_embed.W_pos", "ln_final.w", "ln_final.b") if k in done}
    out.update(whole)
    if center_unembed and "unembed.W_U" in out:
        w = out["unembed.W_U"]
        mean = sum(w[:, cols].double().sum(1) for cols in slices) / vocab
        for cols in slices:
            w[:, cols] = (w[:, cols].float() - mean[:, None].float()).to(w.dtype)
        if "unembed.b_U" in out:
            b = out["unembed.b_U"]
            out["unembed.b_U"] = (b.float() - b.float().mean()).to(b.dtype)
    return out


def _owned(tensor: torch.Tensor, others: dict) -> bool:
    """Whether `tensor` alone uses its whole storage (so it may be overwritten and kept without a copy)."""
    storage = tensor.untyped_storage()
    whole = storage.nbytes() == tensor.numel() * tensor.element_size()
    shared = any(o is not tensor and o.untyped_storage().data_ptr() == storage.data_ptr() for o in others.values())
    return whole and not shared


def _same_form(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _assign(model: HookedTransformer, tensors: dict) -> set[str]:
    """Make `tensors` the model's parameters, in its dtype, without a copy where a tensor owns its whole storage
    (a permuted view of one, as the converters make, is kept as it is); the names set."""
    params = dict(model.named_parameters())
    keep = {}
    for name, tensor in tensors.items():
        if name not in params:
            continue  # e.g. the norm weights that folding made identity, in a model with weightless norms
        target = params[name]
        tensor = tensor.detach().to(target.dtype).reshape(target.shape)
        keep[name] = tensor if _owned(tensor, {}) else tensor.clone(memory_format=torch.contiguous_format)
    model.load_state_dict(keep, strict=False, assign=True)
    return set(keep)
