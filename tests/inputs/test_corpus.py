"""Corpus loading (toy, .npy, Parquet, hf offline), validation and deterministic sampling."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthact.errors import SynthactError
from synthact.inputs.corpus import FLAT_DOC_LEN, Corpus, load_corpus
from synthact.spec import CorpusSpec, ToyCorpusSpec
from tests.helpers import network_attempts


def toy_spec(**kw):
    return CorpusSpec(toy=ToyCorpusSpec(n_docs=64, doc_len=32, **kw))


def test_toy_corpus_loads_with_label():
    c = load_corpus(toy_spec(), d_vocab=100, n_ctx=10)
    assert c.docs.shape == (64, 32) and c.docs.dtype == np.int64
    assert c.label.startswith("toy-")


def test_sampling_is_deterministic_and_matches_windows():
    c = load_corpus(toy_spec(), d_vocab=100, n_ctx=10)
    doc, off, tok = c.sample(np.random.default_rng(7), 50, 10)
    doc2, off2, tok2 = c.sample(np.random.default_rng(7), 50, 10)
    np.testing.assert_array_equal(tok, tok2)
    np.testing.assert_array_equal(doc, doc2)
    np.testing.assert_array_equal(off, off2)
    assert tok.shape == (50, 10) and tok.dtype == np.int64
    assert off.max() <= 32 - 10 and off.min() >= 0
    for i in range(50):
        np.testing.assert_array_equal(c.docs[doc[i], off[i] : off[i] + 10], tok[i])
    _, _, other = c.sample(np.random.default_rng(8), 50, 10)
    assert not np.array_equal(tok, other)


def test_sample_refuses_prompts_longer_than_the_documents():
    c = Corpus(docs=np.zeros((3, 12), dtype=np.int64), label="zeros")
    with pytest.raises(SynthactError, match="lower n_ctx"):
        c.sample(np.random.default_rng(0), 2, 13)


def test_npy_2d_and_1d(tmp_path):
    docs = np.arange(200, dtype=np.int32).reshape(10, 20) % 50
    np.save(tmp_path / "docs.npy", docs)
    c = load_corpus(CorpusSpec(file=str(tmp_path / "docs.npy")), d_vocab=50, n_ctx=10)
    np.testing.assert_array_equal(c.docs, docs)
    assert c.docs.dtype == np.int64

    flat = np.random.default_rng(0).integers(0, 50, size=2 * FLAT_DOC_LEN + 300)
    np.save(tmp_path / "flat.npy", flat)
    c = load_corpus(CorpusSpec(file=str(tmp_path / "flat.npy")), d_vocab=50, n_ctx=10)
    assert c.docs.shape == (2, FLAT_DOC_LEN)
    np.testing.assert_array_equal(c.docs.ravel(), flat[: 2 * FLAT_DOC_LEN])

    short = flat[:100]
    np.save(tmp_path / "short.npy", short)
    assert load_corpus(CorpusSpec(file=str(tmp_path / "short.npy")), d_vocab=50, n_ctx=10).docs.shape == (1, 100)
    with pytest.raises(SynthactError, match="fewer than one prompt"):
        load_corpus(CorpusSpec(file=str(tmp_path / "short.npy")), d_vocab=50, n_ctx=101)


def test_parquet_list_column(tmp_path):
    rows = [list(range(i, i + 15)) for i in range(5)] + [list(range(12))]
    pq.write_table(pa.table({"input_ids": rows, "other": list(range(6))}), tmp_path / "t.parquet")
    c = load_corpus(CorpusSpec(file=str(tmp_path / "t.parquet")), d_vocab=64, n_ctx=10)
    assert c.docs.shape == (6, 12)  # truncated to the shortest document
    np.testing.assert_array_equal(c.docs[1], np.arange(1, 13))

    with pytest.raises(SynthactError, match="shorter than n_ctx=13"):
        load_corpus(CorpusSpec(file=str(tmp_path / "t.parquet")), d_vocab=64, n_ctx=13)
    with pytest.raises(SynthactError, match="corpus.column"):
        load_corpus(CorpusSpec(file=str(tmp_path / "t.parquet"), column="tokens"), d_vocab=64, n_ctx=10)
    with pytest.raises(SynthactError, match="list of token ids"):
        load_corpus(CorpusSpec(file=str(tmp_path / "t.parquet"), column="other"), d_vocab=64, n_ctx=10)


@pytest.mark.parametrize("bad", [-1, 50])
def test_token_ids_outside_vocab_are_refused(tmp_path, bad):
    docs = np.zeros((4, 20), dtype=np.int64)
    docs[2, 7] = bad
    np.save(tmp_path / "bad.npy", docs)
    with pytest.raises(SynthactError, match=r"outside the model's vocabulary \[0, 50\)"):
        load_corpus(CorpusSpec(file=str(tmp_path / "bad.npy")), d_vocab=50, n_ctx=10)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(SynthactError, match="does not exist"):
        load_corpus(CorpusSpec(file=str(tmp_path / "missing.npy")), d_vocab=50, n_ctx=10)
    np.save(tmp_path / "float.npy", np.ones((4, 20)))
    with pytest.raises(SynthactError, match="must be integers"):
        load_corpus(CorpusSpec(file=str(tmp_path / "float.npy")), d_vocab=50, n_ctx=10)
    np.save(tmp_path / "narrow.npy", np.ones((4, 5), dtype=np.int64))
    with pytest.raises(SynthactError, match="fewer than n_ctx=10"):
        load_corpus(CorpusSpec(file=str(tmp_path / "narrow.npy")), d_vocab=50, n_ctx=10)
    (tmp_path / "tokens.txt").write_text("1 2 3")
    with pytest.raises(SynthactError, match=".npy or .parquet"):
        load_corpus(CorpusSpec(file=str(tmp_path / "tokens.txt")), d_vocab=50, n_ctx=2)


@pytest.mark.timeout(600)  # catches a hang only; what it checks is that no download was attempted
def test_hf_dataset_without_hub_fails_fast():
    with network_attempts() as attempts, pytest.raises(SynthactError, match=r"corpus: \{file: PATH\}") as e:
        load_corpus(CorpusSpec(hf="apollo-research/Skylion007-openwebtext-tokenizer-gpt2"), d_vocab=50257, n_ctx=10)
    assert "Skylion007" in str(e.value) and attempts == []  # offline (tests/conftest.py): no connection attempted


def test_a_missing_parquet_column_is_named_with_the_file_columns_only(tmp_path):
    pq.write_table(pa.table({"ids": [[1, 2, 3, 4]] * 4, "text": ["a"] * 4}), tmp_path / "t.parquet")
    with pytest.raises(SynthactError) as e:
        load_corpus(CorpusSpec(file=str(tmp_path / "t.parquet")), d_vocab=64, n_ctx=2)
    assert "has no column 'input_ids' (its columns: ids, text)" in str(e.value) and "__" not in str(e.value)
