"""Layer ranges against a model: the one home of the layer and read-layer checks and their messages."""

from __future__ import annotations

from synthact.errors import SpecError

FIX = "fix 'layers' / 'read_layers' in the job spec"


def resolve_read_layer(read_layer: int, n_layers: int) -> int:
    return read_layer + n_layers if read_layer < 0 else read_layer


def check_layer(layer: int, n_layers: int, model_label: str, fix: str = FIX) -> None:
    """Raise `SpecError` (a ValueError) when the model has no block `layer`; `fix` says what to change."""
    if not 0 <= layer < n_layers:
        raise SpecError(
            f"layer {layer} is out of range for model '{model_label}' with {n_layers} blocks "
            f"(valid: 0..{n_layers - 1}); {fix}"
        )


def check_layers(job, n_layers: int, model_label: str) -> None:
    """Raise `SpecError` (a ValueError) for layers the model lacks or read layers before the perturbation."""
    for layer in job.layers:
        check_layer(layer, n_layers, model_label)
    resolved = [resolve_read_layer(r, n_layers) for r in job.read_layers]
    if len(set(resolved)) != len(resolved):
        raise SpecError(
            f"read_layers {job.read_layers} name the same block twice on model '{model_label}' with {n_layers} "
            f"blocks; {FIX}"
        )
    for r in job.read_layers:
        rr = resolve_read_layer(r, n_layers)
        if not 0 <= rr < n_layers:
            raise SpecError(
                f"read layer {r} is out of range for model '{model_label}' with {n_layers} blocks "
                f"(valid: 0..{n_layers - 1}, or -1 for the last); {FIX}"
            )
        for layer in job.layers:
            if rr < layer:
                raise SpecError(
                    f"read layer {r} (blocks.{rr}.hook_resid_post) comes before perturbation layer {layer} "
                    f"(its SAE's blocks.{layer}.hook_resid_pre or hook_resid_post); read at a layer >= {layer}"
                )
