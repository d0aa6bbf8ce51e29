"""Today's setting: jobs/gemma-scope.yaml (Gemma-2-2B, a Gemma Scope JumpReLU SAE) validates offline and says what it
would need and download; its toy twin (a JumpReLU and a TopK toy SAE as a grid axis) runs offline, shrunk, and every
row recomputes."""

import pytest
import yaml

from synthact.inputs.backends import load_backend
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.recompute import recompute
from synthact.run.store import Store
from synthact.spec import parse_job
from tests.helpers import ROOT, synthact


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_gemma_scope_job_validates_offline_and_says_what_it_would_download():
    done = synthact("validate", "jobs/gemma-scope.yaml")
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # validate wraps its lines at 120 characters
    assert "model google/gemma-2-2b (TransformerLens name 'gemma-2-2b', 2.6" in out  # TransformerLens's offline table
    assert "SAE gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical: google/gemma-scope-2b-pt-res/" in out
    assert "d_sae 16384" in out and "corpus chanind/openwebtext-gemma" in out
    assert "80 GiB GPU: batch" in out and "weights 5.9" in out  # Gemma-2-2B's 3.2B HookedTransformer parameters in bf16


def test_the_toy_twin_validates_with_one_worker_per_architecture():
    done = synthact("validate", "jobs/gemma-scope-toy.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("worker toy-") == 2 and "downloads" not in done.stdout


def test_a_tiny_toy_twin_runs_with_a_jumprelu_and_a_topk_sae_and_recomputes(tmp_path):
    spec = yaml.safe_load((ROOT / "jobs" / "gemma-scope-toy.yaml").read_text())
    for sae in spec["sae"]:
        sae["toy"]["training_tokens"] = 20_000
    spec.update(bases_per_cell=2, shard_size=2, reference={"n_prompts": 256}, device="cpu",
                scan=[{**s, "steps": 8} for s in spec["scan"]])
    spec["generation"].update(swaps=[1], geometry_temp=[0.0], cooccur_window=["nearest_k"], value_source=["template"])
    job = parse_job(spec)
    backends = [load_backend(job.model[0], sae, job.corpus, job.layers, "cpu") for sae in job.sae]
    assert [type(b.saes[1].sae).__name__ for b in backends] == ["JumpReLUSAE", "TopKSAE"]
    assert run_local(job, Store(tmp_path / "out", job), progress=False).ok
    rows = read_table(tmp_path / "out", ["sae", "target_kind"]).to_pandas()
    assert rows.sae.nunique() == 2 and rows.groupby("sae").target_kind.nunique().min() == len(spec["directions"])
    checks = recompute(tmp_path / "out")
    assert checks and all(c.ok for c in checks), [c.mismatches for c in checks if not c.ok]
