"""The manifests of cluster/ as a user applies them: they parse, carry what KubeRay, Kubernetes and
`ray up` need, run commands that exist with options the entry points accept, and agree with
pyproject.toml (ray and torch pins, Python version), the Dockerfile and cluster/serve.yaml."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO

CLUSTER = REPO / "cluster"
K8S_FILES = ["raycluster.yaml", "rayjob-index.yaml", "raycronjob-reindex.yaml", "cronjob-reindex.yaml",
             "rayservice.yaml"]


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def _all_k8s() -> list[dict]:
    return [d for name in K8S_FILES for d in _docs(name)]


def _one(kind: str) -> dict:
    found = [d for d in _all_k8s() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@lru_cache(maxsize=1)
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.match(rf"^{re.escape(package)}(\[[^\]]*\])?==([\w.]+)$", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def _dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def _workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", _dockerfile(), re.M).group(1)


def _walk(obj, path=()):
    """(path, value) of every leaf and node of a parsed document."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (i,))


def _pod_specs(doc: dict) -> list[dict]:
    """Every pod spec in a manifest (head, worker groups, submitters, CronJob pods)."""
    return [v for p, v in _walk(doc) if p and p[-1] == "spec" and isinstance(v, dict) and "containers" in v]


def _containers(doc: dict) -> list[dict]:
    return [c for spec in _pod_specs(doc) for c in spec["containers"]]


def _group_specs(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]


def _cluster_specs() -> list[tuple[str, dict]]:
    out = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in _all_k8s() if d["kind"] == "RayCluster"]
    out += [(f"RayService {d['metadata']['name']}", d["spec"]["rayClusterConfig"])
            for d in _all_k8s() if d["kind"] == "RayService"]
    return out


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+)([kMGT]i?)?", str(quantity))
    assert m, quantity
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


# ------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", K8S_FILES)
def test_every_kubernetes_manifest_parses_with_the_required_fields(name):
    docs = _docs(name)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc), name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        assert doc["apiVersion"] == ("batch/v1" if doc["kind"] == "CronJob" else "ray.io/v1")
        for container in _containers(doc):
            assert container["name"] and container["image"], (name, container)


def test_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    spec = _one("RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    gpu = [g for g in spec["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert len(gpu) == 1
    group = gpu[0]
    assert group["minReplicas"] == 0 < group["maxReplicas"] and group["minReplicas"] <= group["replicas"]
    assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"]["tolerations"])


def test_object_store_is_explicit_and_fits_in_dev_shm():
    for where, cluster in _cluster_specs():
        for group in _group_specs(cluster):
            store = int(group["rayStartParams"]["object-store-memory"])
            pod = group["template"]["spec"]
            shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert len(shm) == 1, where
            container = pod["containers"][0]
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts[shm[0]["name"]] == "/dev/shm", where
            assert store < _bytes(shm[0]["emptyDir"]["sizeLimit"]), where
            assert store < _bytes(container["resources"]["limits"]["memory"]), where


def test_ray_auth_mode_is_explicit_in_every_pod():
    for doc in _all_k8s():
        for container in _containers(doc):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE") == "disabled", (doc["metadata"]["name"], container["name"])
    assert re.search(r"^ENV RAY_AUTH_MODE=disabled", _dockerfile(), re.M)
    assert "-e RAY_AUTH_MODE=disabled" in yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())["docker"]["run_options"]


def test_jobs_target_the_batch_cluster_and_run_on_a_schedule():
    cluster = _one("RayCluster")["metadata"]["name"]
    job, cron, plain = _one("RayJob"), _one("RayCronJob"), _one("CronJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster}
    template = cron["spec"]["jobTemplate"]
    assert template["clusterSelector"] == {"ray.io/cluster": cluster} and template["entrypoint"]
    for schedule in (cron["spec"]["schedule"], plain["spec"]["schedule"]):
        assert len(schedule.split()) == 5
    assert cron["spec"]["schedule"] == plain["spec"]["schedule"]
    assert plain["spec"]["concurrencyPolicy"] == "Forbid"
    command = plain["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["ray", "job", "submit"]
    assert command[command.index("--address") + 1] == f"http://{cluster}-head-svc:8265"
    # The two schedulers run the same command.
    assert command[command.index("--") + 1:] == shlex.split(template["entrypoint"])


# ------------------------------------------------------------------------------------ commands
def _job_commands() -> list[list[str]]:
    """Every `python /app/jobs/X.py ...` the manifests run, as argv."""
    commands = [shlex.split(_one("RayJob")["spec"]["entrypoint"]),
                shlex.split(_one("RayCronJob")["spec"]["jobTemplate"]["entrypoint"])]
    plain = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    commands.append(plain[plain.index("--") + 1:])
    return commands


@lru_cache(maxsize=None)
def _help(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={"RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin",
                                           "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_job_commands_exist_and_every_option_they_use_is_accepted():
    import typer

    from pipeline.cli import app

    group = typer.main.get_command(app)
    scripts = set()
    for argv in _job_commands():
        assert argv[0] == "python" and argv[1].startswith(_workdir() + "/jobs/"), argv
        script = argv[1][len(_workdir()) + 1:]
        assert (REPO / script).is_file(), script
        scripts.add(script)
        help_text = _help(script)
        for option in (a for a in argv[2:] if a.startswith("--")):
            assert option in help_text, (script, option)
        # The entry point prepends its subcommand; the arguments must parse (types, arity).
        subcommand = Path(script).stem
        command = group.commands[subcommand]
        ctx = command.make_context(subcommand, list(argv[2:]))
        assert ctx.params["corpus"].startswith("s3://")
    assert scripts == {"jobs/index.py", "jobs/reindex.py"}


def test_dockerfile_installs_the_project_as_pyproject_says():
    text = _dockerfile()
    python = re.search(r"^FROM python:(\d+\.\d+)", text, re.M).group(1)
    assert _pyproject()["project"]["requires-python"] == f">={python}"
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(_pin('torch'))}$", text, re.M)
    extras = re.findall(r'pip install [^\n]*"\.\[(\w+)\]"', text)
    assert extras and set(extras) <= set(_pyproject()["project"]["optional-dependencies"])
    for source in re.findall(r"^COPY (\S+) \./", text, re.M):
        assert (REPO / source).exists(), source
    assert "jobs" in re.findall(r"^COPY (\S+) \./", text, re.M)


def test_images_and_ray_versions_agree_with_pyproject():
    ray_version = _pin("ray")
    images = {c["image"] for doc in _all_k8s() for c in _containers(doc)}
    images.add(yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())["docker"]["image"])
    assert len(images) == 1, images
    image = images.pop()
    assert image.rsplit(":", 1)[1].startswith(_pyproject()["project"]["version"] + "-")
    assert re.search(rf"-t {re.escape(image)} ", _dockerfile())
    for where, cluster in _cluster_specs():
        assert cluster["rayVersion"] == ray_version, where


def test_ray_up_config_is_valid_for_this_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 < gpu[0]["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    store = int(re.search(r"--object-store-memory=(\d+)", head_start).group(1))
    shm = next(o for o in config["docker"]["run_options"] if o.startswith("--shm-size="))
    assert store < _bytes(shm.split("=")[1].replace("g", "Gi"))
    assert "--gpus all" in config["docker"]["worker_run_options"]


# ------------------------------------------------------------------------------------ serving
def test_rayservice_embeds_exactly_the_serve_config():
    service = _one("RayService")
    serve_yaml = yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_yaml


def test_serve_application_loads_and_its_api_key_comes_from_a_secret():
    from pipeline.serve.config import ServeConfig

    serve_yaml = yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    service = _one("RayService")
    for application in serve_yaml["applications"]:
        module, attribute = application["import_path"].split(":")
        assert (REPO / (module.replace(".", "/") + ".py")).is_file()
        assert f"def {attribute}(" in (REPO / (module.replace(".", "/") + ".py")).read_text()
        config = ServeConfig.from_args(dict(application["args"]))
        assert config.app_name == application["name"]
        # Every pod may host an ingress replica: each gets the key from the Secret.
        for container in _containers(service):
            env = {e["name"]: e for e in container["env"]}
            ref = env[config.api_key_env]["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"], container["name"]
