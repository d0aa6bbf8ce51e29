"""Where in the residual stream an SAE lives, and so where synthact perturbs: the one hook convention.

An SAE on `blocks.L.hook_resid_pre` reads the residual stream entering block L; one on
`blocks.L.hook_resid_post` reads the stream leaving block L, which is the input of block L+1
(`blocks.{L+1}.hook_resid_pre`), or, for the last block, the final residual stream that only
`ln_final` and the unembedding read. Everything that needs the perturbation point (reference
statistics, kinds, both scan paths) asks `blocks_before(hook)`: how many blocks run before it.
The SAE's layer L (the job's `layers`) is the L in its hook name; read layers R >= L.
"""

from __future__ import annotations

import re

import torch

from synthact.errors import SynthactError

_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post)")


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def parse_hook(hook: str) -> tuple[int, str] | None:
    """(layer, 'hook_resid_pre' | 'hook_resid_post') for a supported hook name, else None."""
    match = _HOOK.fullmatch(hook or "")
    return (int(match.group(1)), match.group(2)) if match else None


def blocks_before(hook: str) -> int:
    """How many blocks run before the hook point: L for resid_pre L, L + 1 for resid_post L."""
    parsed = parse_hook(hook)
    if parsed is None:
        raise SynthactError(
            f"hook '{hook}' is not a residual-stream hook synthact can perturb; supported: "
            "blocks.L.hook_resid_pre and blocks.L.hook_resid_post"
        )
    layer, where = parsed
    return layer + (where == "hook_resid_post")


def sae_hook(sae, layer: int) -> str:
    """The hook an sae_lens SAE reads (its cfg.metadata.hook_name); resid_pre `layer` if it names none."""
    metadata = getattr(sae.cfg, "metadata", None)
    return getattr(metadata, "hook_name", None) or resid_pre(layer)


def stream_index(sae, layer: int) -> int:
    """`blocks_before` of the SAE's hook: the `layer` argument of `real_activations` for this SAE."""
    return blocks_before(sae_hook(sae, layer))


@torch.no_grad()
def real_activations(model, tokens: torch.Tensor, layer: int, batch_size: int = 512) -> torch.Tensor:
    """The residual stream entering block `layer` (after all blocks when `layer` = n_layers) at the last
    position, float32 [B, d_model]. For an SAE's hook point pass `stream_index(sae, L)`."""
    out = [
        model(tokens[i : i + batch_size], stop_at_layer=layer)[:, -1].float()
        for i in range(0, tokens.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, model.cfg.d_model)
