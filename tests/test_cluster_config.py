"""cluster.yaml is a valid Ray cluster-launcher config and keeps its services off the internet.

Validation uses Ray's own schema (``ray/autoscaler/ray-schema.json``, shipped in the wheel) and
the same two helpers ``ray up`` runs before it talks to any cloud: ``prepare_config`` (merges the
provider's defaults.yaml) and ``validate_config`` (schema + cross-field checks). Neither needs
cloud credentials, boto3 or the network.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
BEGIN, END = "# BEGIN LOCAL VARIANT", "# END LOCAL VARIANT"
WORLD_CIDRS = ("0.0.0.0/0", "::/0")
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (plain safe_load silently keeps the last one)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _load(text: str) -> dict:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass


def _aws() -> dict:
    return _load(CLUSTER_YAML.read_text())


def _uncomment_local_variant() -> dict:
    text = CLUSTER_YAML.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "local variant markers missing"
    block = text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    lines = []
    for line in block.splitlines():
        assert line.startswith("#"), f"uncommented line inside the local variant: {line!r}"
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return _load("\n".join(lines))


def _ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"Ray's cluster schema not found at {path}"
    return json.loads(path.read_text())


def _schema_errors(config: dict) -> list[str]:
    schema = _ray_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = validator_cls(schema).iter_errors(config)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _prepared(config: dict) -> dict:
    """What `ray up` does before touching the provider: merge defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def _walk(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (str(i),))
    else:
        yield path, obj


def _commands(config: dict, keys=COMMAND_KEYS) -> list[str]:
    cmds = [c for k in keys for c in config.get(k, [])]
    for node_type in config.get("available_node_types", {}).values():
        for k in ("initialization_commands", "worker_setup_commands"):
            if k in keys:
                cmds.extend(node_type.get(k, []))
    return cmds


def _mlflow_server_command(config: dict) -> list[str]:
    found = [c for c in _commands(config) if "mlflow server" in c]
    assert len(found) == 1, f"expected one `mlflow server` command, found {len(found)}"
    assert found[0] in config["head_setup_commands"], "the MLflow server must start on the head only"
    return shlex.split(found[0])


def _option(argv: list[str], *names: str) -> str:
    for i, tok in enumerate(argv):
        for name in names:
            if tok == name:
                return argv[i + 1]
            if tok.startswith(name + "="):
                return tok.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {' '.join(argv)}")


BOTH = pytest.mark.parametrize("variant", ["aws", "local"])


def _variant(name: str) -> dict:
    return _aws() if name == "aws" else _uncomment_local_variant()


# --------------------------------------------------------------------------- schema


def test_schema_ships_with_installed_ray():
    schema = _ray_schema()
    assert schema["$schema"].startswith("http://json-schema.org/draft-07")
    assert schema["additionalProperties"] is False  # unknown top-level keys are errors


@BOTH
def test_raw_config_matches_ray_schema(variant):
    errors = _schema_errors(_variant(variant))
    assert not errors, "\n".join(errors)


@BOTH
def test_config_passes_ray_prepare_and_validate(variant):
    prepared = _prepared(_variant(variant))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert not _schema_errors(prepared)


def test_schema_check_is_not_vacuous():
    """The validator really rejects what Ray would reject, so a pass above means something."""
    bad_key = _aws() | {"enviroment": {"A": "1"}}
    assert any("enviroment" in e for e in _schema_errors(bad_key))

    bad_gpu = _aws()
    bad_gpu["available_node_types"]["gpu_1x_a10g"]["resources"]["GPU"] = 0.5  # must be an integer
    assert _schema_errors(bad_gpu)

    from ray.autoscaler._private.util import validate_config

    too_many = _prepared(_aws())
    too_many["available_node_types"]["gpu_1x_a10g"]["min_workers"] = too_many["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(too_many)


# --------------------------------------------------------------------------- node types


def test_head_is_cpu_and_workers_offer_single_and_multi_gpu():
    cfg = _aws()
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"]), "head should be a CPU instance"
    assert head.get("max_workers", 0) == 0

    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpus = {k: v["resources"].get("GPU", 0) for k, v in workers.items()}
    assert 1 in gpus.values(), "need a single-GPU worker type"
    assert any(g > 1 for g in gpus.values()), "need a multi-GPU worker type"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert sum(t["min_workers"] for t in types.values()) <= cfg["max_workers"]


def test_local_variant_has_on_prem_essentials():
    loc = _uncomment_local_variant()
    assert loc["provider"]["type"] == "local"
    assert isinstance(loc["provider"]["head_ip"], str)
    assert loc["provider"]["worker_ips"] and all(isinstance(ip, str) for ip in loc["provider"]["worker_ips"])
    assert loc["provider"]["head_ip"] not in loc["provider"]["worker_ips"]
    assert {"ssh_user", "ssh_private_key"} <= set(loc["auth"])
    # Ray aborts on user-defined node types for manually managed on-prem clusters.
    assert "available_node_types" not in loc and "head_node_type" not in loc


# --------------------------------------------------------------------------- network exposure


@BOTH
def test_no_port_is_opened_to_the_world(variant):
    cfg = _variant(variant)
    for path, value in _walk(cfg):
        if isinstance(value, str):
            for cidr in WORLD_CIDRS:
                assert cidr not in value, f"{'/'.join(path)} opens something to {cidr}"
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        assert not set(cidrs) & set(WORLD_CIDRS), rule


def test_every_aws_node_type_brings_its_own_security_group():
    """Without SecurityGroupIds Ray creates a group whose default rules open SSH to 0.0.0.0/0
    (ray/autoscaler/_private/aws/config.py: _create_default_ssh_inbound_rules), whatever
    provider.security_group says. Naming the groups is the only way to keep that rule out."""
    cfg = _aws()
    for name, t in cfg["available_node_types"].items():
        sgs = t["node_config"].get("SecurityGroupIds")
        assert sgs and all(isinstance(s, str) and s.startswith("sg-") for s in sgs), name


@BOTH
def test_mlflow_server_binds_loopback_and_uses_shared_storage(variant):
    argv = _mlflow_server_command(_variant(variant))
    assert _option(argv, "--app-name") == "basic-auth"  # unauthenticated requests refused (tests/test_tracking_server)
    assert _option(argv, "--host", "-h") == "127.0.0.1"
    assert _option(argv, "--port", "-p") == "5000"
    assert _option(argv, "--workers", "-w") == "1"  # single SQLite writer on NFS
    assert _option(argv, "--backend-store-uri").startswith("sqlite:////mnt/shared/")
    assert _option(argv, "--artifacts-destination").startswith("/mnt/shared/")


@BOTH
def test_nothing_binds_all_interfaces_after_ray_defaults_are_merged(variant):
    """AWS defaults.yaml starts the head with --dashboard-host=0.0.0.0; our override must win."""
    prepared = _prepared(_variant(variant))
    for cmd in _commands(prepared):
        assert "0.0.0.0" not in cmd, cmd
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in prepared[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in prepared["file_mounts"]


def test_tunnels_are_documented():
    text = CLUSTER_YAML.read_text()
    assert "ray dashboard cluster.yaml" in text
    assert re.search(r"ssh .*-L 5000:127\.0\.0\.1:5000", text)


# --------------------------------------------------------------------------- setup and env


@BOTH
def test_setup_installs_the_project(variant):
    cfg = _variant(variant)
    setup = cfg["setup_commands"]
    assert "pip install torch==2.14.1 torchvision==0.29.1" in setup
    mounted = [remote for remote, local in cfg["file_mounts"].items() if local == "."]
    assert len(mounted) == 1, "the working tree must be shipped with file_mounts"
    assert f"cd {mounted[0]} && pip install -e ." in setup
    assert setup.index("pip install torch==2.14.1 torchvision==0.29.1") < setup.index(
        f"cd {mounted[0]} && pip install -e ."
    )


@BOTH
def test_cluster_ray_version_matches_installed_ray(variant):
    pins = {m for c in _commands(_variant(variant)) for m in re.findall(r"ray\[default\]==([\w.]+)", c)}
    assert pins == {importlib.metadata.version("ray")}, "local and cluster Ray versions must match"


@BOTH
def test_sweeps_use_shared_storage_and_only_the_head_knows_mlflow(variant):
    cfg = _variant(variant)
    every_node = " ".join(cfg["setup_commands"])
    head_only = " ".join(cfg["head_setup_commands"])
    assert "export ALVLM_STORAGE_PATH=/mnt/shared/ray_results" in every_node
    assert "ln -s /mnt/shared/ray_results ~/ray_results" in every_node  # Ray's default path too
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head_only
    worker_side = _commands(cfg, ("setup_commands", "worker_setup_commands", "worker_start_ray_commands"))
    assert not any("MLFLOW_TRACKING_URI" in c or "mlflow server" in c for c in worker_side)


@BOTH
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_commands_are_valid_bash(variant):
    for cmd in _commands(_variant(variant)):
        res = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}\n{res.stderr}"


@BOTH
def test_mlflow_credentials_are_generated_on_the_head_never_written_in_the_yaml(variant):
    joined = "\n".join(_variant(variant)["head_setup_commands"])
    assert "secrets.token_urlsafe" in joined and "umask 077" in joined  # a 0600 file on the head
    assert "admin_password = $(cat ~/.alvlm_mlflow_password)" in joined
    assert 'MLFLOW_TRACKING_PASSWORD="$(cat ~/.alvlm_mlflow_password)"' in joined  # read at shell time, not stored here
    assert "password1234" not in joined  # MLflow's default admin password is never used
