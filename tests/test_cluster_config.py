"""The cluster launcher configs (cluster.yaml, docs/cluster-local.yaml), checked by Ray's own validator.

`prepare_config` merges the provider's defaults as `ray up` does and `validate_config` applies
the schema shipped in the wheel (ray/autoscaler/ray-schema.json); nothing contacts a cloud.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "docs" / "cluster-local.yaml"

TORCH = re.compile(r"pip install .*\btorch==")
PROJECT = re.compile(r"pip install .*-e \S*mf-tune\b")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` works from: the file merged with the provider's defaults, then validated."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def setup_by_node_type(config: dict[str, Any]) -> dict[str, list[str]]:
    """The setup commands each node type really runs (a node type's own list replaces the global one)."""
    head = config["head_node_type"]
    return {
        name: config["head_setup_commands"]
        if name == head
        else node.get("worker_setup_commands", config["worker_setup_commands"])
        for name, node in config["available_node_types"].items()
    }


def first_index(commands: list[str], pattern: re.Pattern[str]) -> int:
    return next((i for i, c in enumerate(commands) if pattern.search(c)), -1)


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_config_passes_rays_validator(path: Path):
    # Both files are what `ray up` accepts: no unknown key, a known head node type.
    config = prepared(load(path))
    assert config["head_node_type"] in config["available_node_types"]


def test_cluster_config_with_misspelt_key_is_rejected():
    raw = load(AWS)
    raw["idle_timout_minutes"] = raw.pop("idle_timeout_minutes")
    # The schema allows no unknown top-level key.
    with pytest.raises(jsonschema.ValidationError, match="idle_timout_minutes"):
        prepared(raw)


def test_cluster_config_with_misspelt_node_type_key_is_rejected():
    raw = load(AWS)
    raw["available_node_types"]["gpu_worker"]["min_worker"] = 1
    # Nor an unknown key in a node type.
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        prepared(raw)


def test_cluster_config_with_unknown_head_node_type_is_rejected():
    raw = load(AWS)
    raw["head_node_type"] = "ray.head.default"
    # The head must be one of available_node_types.
    with pytest.raises(ValueError, match="head_node_type"):
        prepared(raw)


def test_cluster_config_head_runs_no_trials_on_demand():
    config = prepared(load(AWS))
    head = config["available_node_types"][config["head_node_type"]]
    # CPU 0: no trial is ever placed on the head, which runs the driver and the study.
    assert head["resources"] == {"CPU": 0}
    # On-demand: a reclaimed head would take the driver with it.
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["max_workers"] == 0


def test_cluster_config_has_spot_cpu_and_gpu_workers_with_bounds():
    config = prepared(load(AWS))
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1]
    cpu = [k for k, v in workers.items() if not v["resources"].get("GPU")]
    # One GPU worker type declaring its GPU, and one CPU worker type.
    assert gpu and cpu
    for name, node in workers.items():
        # Workers run on spot; trials survive a reclaimed node through their checkpoints.
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        # Autoscaling bounds: from none up to a cap per type, within the global cap.
        assert 0 == node["min_workers"] < node["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_config_setup_installs_torch_before_the_project(path: Path):
    config = prepared(load(path))
    for name, commands in setup_by_node_type(config).items():
        torch, project = first_index(commands, TORCH), first_index(commands, PROJECT)
        # Every node type installs torch, then the project (so its unpinned torch is satisfied).
        assert 0 <= torch < project, f"{path.name}: {name} runs {commands}"
        # Into the venv the setup creates first, which `ray start` and the job's python then use.
        assert 0 <= first_index(commands, re.compile(r"-m venv ")) < torch, name


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_config_starts_ray_with_token_authentication(path: Path):
    config = prepared(load(path))
    starts = [
        c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c
    ]
    # Head and workers start with token authentication on, and it is never switched off.
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "RAY_AUTH_MODE=disabled" not in path.read_text()
    # The token comes from the user's machine to every node.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_local_config_names_machines_and_keeps_trials_off_the_head():
    raw = load(LOCAL)
    config = prepared(raw)
    # The on-premises variant lists the machines instead of node types.
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    assert "available_node_types" not in raw
    # Its head offers no CPUs to trials, as in cluster.yaml.
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start --head" in c)
    assert "--num-cpus=0" in head_start
