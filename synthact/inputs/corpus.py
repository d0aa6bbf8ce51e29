"""Prompts: windows of token ids from a Hugging Face dataset, a local token file, or the toy chain."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthact.errors import SynthactError, first_line
from synthact.inputs.hub import hub_error, require_hub
from synthact.inputs.toy import toy_corpus
from synthact.spec import CorpusSpec

FLAT_DOC_LEN = 1024  # a 1-D token file is cut into documents of max(n_ctx, this) tokens


@dataclass
class Corpus:
    """Tokenized documents, int64 [n_docs, doc_len]; prompts are windows of them."""

    docs: np.ndarray
    label: str

    @property
    def n_docs(self) -> int:
        return self.docs.shape[0]

    @property
    def doc_len(self) -> int:
        return self.docs.shape[1]

    def sample(self, rng: np.random.Generator, n: int, n_ctx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n random windows: (doc[n], offset[n], tokens[n, n_ctx]), all int64, drawn from `rng`."""
        self._check_n_ctx(n_ctx)
        doc = rng.integers(0, self.n_docs, size=n, dtype=np.int64)
        offset = rng.integers(0, self.doc_len - n_ctx + 1, size=n, dtype=np.int64)
        tokens = self.docs[doc[:, None], offset[:, None] + np.arange(n_ctx)]
        return doc, offset, tokens

    def _check_n_ctx(self, n_ctx: int) -> None:
        if not 1 <= n_ctx <= self.doc_len:
            raise SynthactError(
                f"prompts of {n_ctx} tokens do not fit corpus '{self.label}', whose documents have "
                f"{self.doc_len} tokens; lower n_ctx or use a corpus with longer documents"
            )


def load_corpus(spec: CorpusSpec, d_vocab: int, n_ctx: int) -> Corpus:
    """Load and validate the corpus a job names: ids in [0, d_vocab), documents >= n_ctx tokens."""
    if spec.toy:
        docs = toy_corpus(spec.toy, d_vocab)
    elif spec.file:
        docs = _read_file(Path(spec.file).expanduser(), spec.column, n_ctx)
    else:
        docs = _read_hf(spec, n_ctx)
    return Corpus(docs=_validated(docs, spec.label, d_vocab, n_ctx), label=spec.label)


# --------------------------------------------------------------------------- sources


def _read_file(path: Path, column: str, n_ctx: int) -> np.ndarray:
    if not path.is_file():
        raise SynthactError(
            f"corpus file '{path}' does not exist; set corpus.file to a .npy ([docs, tokens] or 1-D) "
            "or Parquet token file"
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise SynthactError(f"corpus file '{path}' is not a plain numeric .npy array ({e})") from None
        if arr.ndim == 1:
            return _split_flat(arr, n_ctx, str(path))
        if arr.ndim == 2:
            return arr
        raise SynthactError(
            f"corpus file '{path}' holds a {arr.ndim}-D array; give a 2-D [docs, tokens] or 1-D token array"
        )
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, column, n_ctx)
    raise SynthactError(f"corpus file '{path}' has suffix '{suffix}'; use a .npy or .parquet token file")


def _split_flat(tokens: np.ndarray, n_ctx: int, source: str) -> np.ndarray:
    """Cut a 1-D token stream into documents of max(n_ctx, FLAT_DOC_LEN) tokens (shorter: one document)."""
    doc_len = min(max(n_ctx, FLAT_DOC_LEN), len(tokens))
    if doc_len < n_ctx or doc_len == 0:
        raise SynthactError(
            f"corpus '{source}' has only {len(tokens)} tokens, fewer than one prompt of n_ctx={n_ctx}; "
            "give more tokens or lower n_ctx"
        )
    n_docs = len(tokens) // doc_len
    return tokens[: n_docs * doc_len].reshape(n_docs, doc_len)


def _read_parquet(path: Path, column: str, n_ctx: int) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if column not in names:  # named from the file's own schema, not pyarrow's dataset fields (__filename, ...)
            raise SynthactError(f"Parquet corpus '{path}' has no column '{column}' (its columns: {', '.join(names)}); "
                                "set corpus.column to the column that holds a list of token ids per row")
        table = pq.read_table(path, columns=[column])
    except SynthactError:
        raise
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SynthactError(
            f"could not read column '{column}' of Parquet corpus '{path}' ({first_line(str(e))}); set corpus.column to "
            "the column that holds a list of token ids per row"
        ) from None
    return _rows_to_docs(table.column(column).to_pylist(), n_ctx, f"{path}:{column}")


def _read_hf(spec: CorpusSpec, n_ctx: int) -> np.ndarray:
    what = f"dataset '{spec.hf}'"
    local_hint = "corpus: {file: PATH} (a .npy or Parquet token file)"
    try:
        import datasets
    except ImportError:
        raise SynthactError(
            f"corpus.hf '{spec.hf}' needs the 'datasets' package (pip install datasets); or point the spec "
            f"at a local copy: {local_hint}"
        ) from None
    require_hub(what, local_hint)
    try:
        stream = datasets.load_dataset(spec.hf, split=spec.split, streaming=True)
        first = next(iter(stream), None)
        if first is not None and spec.column not in first:
            raise SynthactError(
                f"{what} has no column '{spec.column}' (columns: {', '.join(first)}); set corpus.column to "
                "the column of token ids"
            )
        rows = [row[spec.column] for row in itertools.islice(stream, spec.max_docs)]
    except SynthactError:
        raise
    except Exception as e:
        raise hub_error(what, local_hint, e) from None
    return _rows_to_docs(rows, n_ctx, f"{what} split '{spec.split}'")


def _rows_to_docs(rows: list, n_ctx: int, source: str) -> np.ndarray:
    """Rows of token ids -> [n_docs, doc_len], truncated to the shortest row."""
    if not rows:
        raise SynthactError(f"corpus '{source}' has no rows")
    if not all(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
        raise SynthactError(f"corpus '{source}' must hold a list of token ids per row, not {type(rows[0]).__name__}")
    lengths = np.array([len(r) for r in rows])
    short = int((lengths < n_ctx).sum())
    if short:
        raise SynthactError(
            f"{short} of {len(rows)} documents in corpus '{source}' are shorter than n_ctx={n_ctx} tokens "
            f"(shortest: {lengths.min()}); drop them or lower n_ctx"
        )
    doc_len = int(lengths.min())
    return np.array([r[:doc_len] for r in rows])


# --------------------------------------------------------------------------- validation


def _validated(docs: np.ndarray, label: str, d_vocab: int, n_ctx: int) -> np.ndarray:
    if docs.ndim != 2 or docs.shape[0] == 0:
        raise SynthactError(f"corpus '{label}' holds no documents (shape {docs.shape})")
    if docs.dtype.kind not in "iu":
        raise SynthactError(
            f"corpus '{label}' holds {docs.dtype} values; token ids must be integers (e.g. int32 or int64)"
        )
    if docs.shape[1] < n_ctx:
        raise SynthactError(
            f"documents in corpus '{label}' have {docs.shape[1]} tokens, fewer than n_ctx={n_ctx}; "
            "use longer documents or lower n_ctx"
        )
    lo, hi = int(docs.min()), int(docs.max())
    if lo < 0 or hi >= d_vocab:
        raise SynthactError(
            f"corpus '{label}' holds token ids {lo}..{hi}, outside the model's vocabulary [0, {d_vocab}); "
            "was it tokenized for another model? Use token ids of this model's tokenizer"
        )
    return np.ascontiguousarray(docs, dtype=np.int64)
