"""Loading a job spec: YAML or a dict -> a validated Job, readable errors, and the field reference."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from synthact.errors import SpecError, first_line
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
from synthact.spec.job import NOT_IDENTITY, Job

MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_VALUES = 100_000


class DuplicateKey(yaml.YAMLError):
    """A mapping that gives one key twice (plain YAML keeps the last silently)."""


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping, naming it and both lines."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in lines:
                raise DuplicateKey(f"line {line}: key '{key}' is given twice (first on line {lines[key]}); YAML would "
                                   "keep only the last, so remove one")
            lines[key] = line
        return super().construct_mapping(node, deep)


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    """Read and validate a YAML job spec, with `overrides` ("key.sub=value", values in YAML) applied on top;
    SpecError with a readable message on any problem."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"job spec '{path}' does not exist; pass the path of a YAML file such as jobs/smoke.yaml")
    if not path.is_file():
        raise SpecError(f"job spec '{path}' is not a file; pass the path of a YAML file such as jobs/smoke.yaml")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"job spec '{path}' is larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a short YAML file")
    try:
        text = path.read_text()
        data = yaml.load(text, StrictLoader)
    except UnicodeDecodeError:
        raise SpecError(f"job spec '{path}' is not a text file; pass the path of a YAML file") from None
    except DuplicateKey as e:
        raise SpecError(f"job spec '{path}', {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"job spec '{path}' is not valid YAML: {e}") from None
    if expanded_size(data) > MAX_SPEC_VALUES:
        raise SpecError(f"job spec '{path}' expands to more than {MAX_SPEC_VALUES:,} values (YAML aliases?); "
                        "a job spec is a short list of fields")
    if not isinstance(data, dict):
        raise SpecError(f"job spec '{path}' must be a YAML mapping of fields (name, model, sae, ...)")
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides)
    return parse_job(data, source=str(path) + (f" with {' '.join(overrides)}" if overrides else ""))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """`data` (a spec as plain data) with each "key.sub=value" applied in order: dotted keys name nested fields, a
    number a list's element (scan.1.steps=12), and the value is YAML (seed=3, layers=[1, 2], wandb=false); a
    missing section is created. The result is validated like a file (unknown keys, types, ranges)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise SpecError(f"'{item}' is not an override; write key=value (a dotted key for a nested field, e.g. "
                            "scan.steps=20 or generation.nearest_k=[5, 10]; the value is YAML)")
        try:
            value = yaml.load(text, StrictLoader)
        except yaml.YAMLError as e:
            raise SpecError(f"override '{item}': the value is not valid YAML ({first_line(str(e))})") from None
        *path, last = key.strip().split(".")
        node = data
        for depth, part in enumerate(path):
            node = _child(node, part, item, ".".join(path[: depth + 1]))
        if isinstance(node, list):
            node[_index(node, last, item)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"override '{item}': {'.'.join(path)} is {node!r}, not a section with fields")
    return data


def _child(node, part: str, key: str, where: str):
    """The element `part` of a section or list on the way to an override's field (a missing section is created)."""
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise SpecError(f"override '{key}': {where.rpartition('.')[0] or where} is {node!r}, not a section with fields")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(f"override '{key}': '{part}' is not an element of a list of {len(node)} (0..{len(node) - 1})")
    return int(part)


def expanded_size(data: Any, memo: dict | None = None) -> int:
    """How many values `data` holds once YAML aliases are expanded (each shared node counted per use)."""
    memo = {} if memo is None else memo
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in memo:
        children = [*data.keys(), *data.values()] if isinstance(data, dict) else data
        memo[id(data)] = 1 + sum(expanded_size(c, memo) for c in children)
    return memo[id(data)]


def parse_job(data: dict, source: str = "job spec") -> Job:
    try:
        return Job.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source} is invalid:\n{format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(err["loc"][-1]), fields_at(err["loc"][:-1]), n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'? " if near else ""
            lines.append(f"  - unknown key '{where}': {hint}remove it or check its spelling (see docs/spec.md)")
        elif err["type"] in ("int_type", "float_type") and isinstance(err["input"], (bool, str)):
            number = "a whole number" if err["type"] == "int_type" else "a number"
            lines.append(f"  - {where}: expects {number}, not {_yaml(err['input'])}"
                         + (" (a boolean)" if isinstance(err["input"], bool) else ""))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def fields_at(loc) -> list[str]:
    """The field names of the spec section at a validation error's location (Job's at the top)."""
    model: type[BaseModel] | None = Job
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _section(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _section(annotation) -> type[BaseModel] | None:
    """The spec section a field holds (through list[...], Optional and Annotated), None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section(arg)
        if found is not None:
            return found
    return None


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def field_reference() -> str:
    """Every job-spec field with its type, default and description, as Markdown (docs/spec.md)."""
    lines = ["# Job spec fields", "", "Generated by `synthact validate --fields`; every field is declared in",
             "`synthact/spec/fields.py` and `synthact/spec/job.py`. Unknown keys are refused (with the nearest known",
             "name), and so are a key given twice, numbers outside the range in brackets, NaN and infinity, and",
             "booleans or strings where a number is expected (`bases_per_cell: true` is not 1; an integer is a fine",
             "float).", "",
             "Overrides: `synthact run JOB KEY=VALUE ...` (and `validate`) change fields on the command line: a dotted",
             "key names a nested field and a number a list's element (`scan.1.steps=50`), the value is YAML",
             "(`layers=[1, 2]`, `wandb=false`); they are validated like the file and recorded in OUT/job.json.", "",
             "Resume: a rerun into an output directory resumes it when the job's identity is unchanged. The identity",
             f"is every field except {', '.join(f'`{n}`' for n in NOT_IDENTITY)} (they change no row and no row records",
             "them); changing any other field (a grid axis, `seed`, `device`, `dtype`, `metrics`, ...) needs a new",
             "`--out` directory. Contents of local input files (corpus, checkpoints) count too. Overrides count as",
             "the fields they change: a resume with the same overrides resumes, one that changes the identity is",
             "refused.", ""]

    def section(title: str, model: type[BaseModel]) -> None:
        lines.extend([f"## {title}", "", (model.__doc__ or "").strip(), "", "| field | type | default | description |",
                      "|---|---|---|---|"])
        for name, field in model.model_fields.items():
            value = field.default_factory() if field.default_factory else field.default
            default = "required" if field.is_required() else "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
            annotation, bounds = field.annotation, _bounds(field.metadata)
            if get_origin(annotation) is list and get_origin(get_args(annotation)[0]) is Annotated:
                item, *meta = get_args(get_args(annotation)[0])
                annotation, bounds = list[item], _bounds(meta[0].metadata if meta and hasattr(meta[0], "metadata") else meta)
            kind = annotation.__name__ if get_origin(annotation) is None and hasattr(annotation, "__name__") else str(annotation)
            kind += f" {bounds}" if bounds else ""
            kind = kind.replace("typing.", "").replace("synthact.spec.fields.", "").replace("synthact.spec.vocabulary.", "").replace("|", "or")
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {default} | {description} |")
        lines.append("")

    section("job", Job)
    for title, model in [("model", ModelSpec), ("model.toy", ToyModelSpec), ("sae", SAESpec), ("sae.toy", ToySAESpec),
                         ("corpus", CorpusSpec), ("corpus.toy", ToyCorpusSpec), ("generation", GenerationSpec),
                         ("scan", ScanSpec), ("metrics", MetricsSpec), ("reference", ReferenceSpec), ("wandb", WandbSpec), ("ray", RaySpec)]:
        section(title, model)
    return "\n".join(lines)


def _bounds(metadata) -> str:
    """'[lo, hi]'-style range of pydantic bound constraints ('' when there are none)."""
    lo = hi = None
    for m in metadata:
        if getattr(m, "ge", None) is not None:
            lo = f"[{m.ge:,}"
        if getattr(m, "gt", None) is not None:
            lo = f"({m.gt:,}"
        if getattr(m, "le", None) is not None:
            hi = f"{m.le:,}]"
        if getattr(m, "lt", None) is not None:
            hi = f"{m.lt:,})"
    if lo is None and hi is None:
        return ""
    return f"{lo or '(-inf'}, {hi or 'inf)'}"
