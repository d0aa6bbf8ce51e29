"""The job spec: vocabulary, sections, the job and its grid, loading. Import from here."""

from synthact.errors import SpecError
from synthact.spec.fields import (
    CorpusSpec,
    GenerationSpec,
    MetricsSpec,
    ModelSpec,
    RaySpec,
    ReferenceSpec,
    SAESpec,
    ScanSpec,
    ToyCorpusSpec,
    ToyModelSpec,
    ToySAESpec,
    WandbSpec,
)
from synthact.spec.ids import derive_seed, digest
from synthact.spec.job import MAX_SHARDS, Cell, Job, Shard
from synthact.spec.layers import check_layers, resolve_read_layer
from synthact.spec.load import (
    MAX_SPEC_BYTES,
    MAX_SPEC_VALUES,
    expanded_size,
    field_reference,
    format_validation_error,
    load_job,
    parse_job,
)
from synthact.spec.vocabulary import (
    GENERATION_AXES,
    KINDS,
    SYNTHETIC_KINDS,
    TEMPLATE_KINDS,
    Kind,
    pair_problem,
    parse_direction,
    target_kind,
)

__all__ = [
    "SpecError",
    "CorpusSpec",
    "GenerationSpec",
    "MetricsSpec",
    "ModelSpec",
    "RaySpec",
    "ReferenceSpec",
    "SAESpec",
    "ScanSpec",
    "ToyCorpusSpec",
    "ToyModelSpec",
    "ToySAESpec",
    "WandbSpec",
    "derive_seed",
    "digest",
    "MAX_SHARDS",
    "Cell",
    "Job",
    "Shard",
    "check_layers",
    "resolve_read_layer",
    "MAX_SPEC_BYTES",
    "MAX_SPEC_VALUES",
    "expanded_size",
    "field_reference",
    "format_validation_error",
    "load_job",
    "parse_job",
    "GENERATION_AXES",
    "KINDS",
    "SYNTHETIC_KINDS",
    "TEMPLATE_KINDS",
    "Kind",
    "pair_problem",
    "parse_direction",
    "target_kind",
]
