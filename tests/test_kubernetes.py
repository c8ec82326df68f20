"""tools/kubernetes/: every manifest validated against the Kubernetes JSON schemas that
kubernetes-validate bundles (offline; strict, so a misspelt field fails too), and the wiring that
matters asserted on the parsed YAML, as tests/test_compose.py does for docker-compose.yml. The
manifests are not run on a cluster here; the init containers' commands are run on a SQLite file."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "tools" / "kubernetes"
# The oldest Kubernetes the manifests claim (backoffLimitPerIndex: beta and on by default from 1.29)
# and the newest the validator bundles.
VERSIONS = ("1.29", kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"

Obj = dict[str, Any]


def load(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = {path.name: load(path) for path in sorted(K8S.glob("*.yaml"))
             if path.name != "kustomization.yaml"}  # kustomize's own file, no Kubernetes object
OBJECTS = [(name, obj) for name, docs in MANIFESTS.items() for obj in docs]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def find(kind: str, name: str) -> Obj:
    found = [obj for _, obj in OBJECTS if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pods() -> dict[str, Obj]:
    """Every workload's pod spec, by the workload's name."""
    return {obj["metadata"]["name"]: obj["spec"]["template"]["spec"] for _, obj in OBJECTS
            if obj["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")}


def containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def container(pod: Obj, name: str) -> Obj:
    return next(c for c in containers(pod) if c["name"] == name)


def env(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("file", "obj"), OBJECTS,
                         ids=[f"{file}:{obj['kind']}/{obj['metadata']['name']}" for file, obj in OBJECTS])
def test_every_manifest_is_valid_against_the_kubernetes_schema(file: str, obj: Obj, version: str) -> None:
    # Raises ValidationError on a bad manifest, SchemaNotFoundError on an unknown kind/apiVersion.
    kubernetes_validate.validate(obj, version, strict=True)


def _wrong_type(job: Obj) -> None:
    job["spec"]["parallelism"] = "four"


def _misspelt_field(job: Obj) -> None:
    job["spec"]["completionsMode"] = job["spec"].pop("completionMode")


def _gpu_limit_as_a_list(job: Obj) -> None:
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] = [1]


def _container_without_a_name(job: Obj) -> None:
    del job["spec"]["template"]["spec"]["containers"][0]["name"]


@pytest.mark.parametrize("breakage",
                         [_wrong_type, _misspelt_field, _gpu_limit_as_a_list, _container_without_a_name])
def test_the_validator_rejects_a_broken_manifest(breakage: Any) -> None:
    job = copy.deepcopy(find("Job", "workers"))
    kubernetes_validate.validate(job, VERSIONS[-1], strict=True)  # whole before the breakage
    breakage(job)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_into_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # The Secret holds the placeholder: re-applying must never overwrite the real password with it.
    assert sorted(kustomization["resources"]) == sorted(set(MANIFESTS) - {"secret.yaml"})
    namespace = find("Namespace", "fast-mnist-search")["metadata"]["name"]
    namespaces = {obj["metadata"].get("namespace") for _, obj in OBJECTS if obj["kind"] != "Namespace"}
    assert namespaces == {namespace}
    # One image for every container but Postgres, the one kustomization.yaml's `images` renames.
    images = {c["image"] for name, pod in pods().items() if name != "postgres" for c in containers(pod)}
    assert images == {"fast-mnist-search:latest"}
    assert [image["name"] for image in kustomization["images"]] == ["fast-mnist-search"]


def test_every_worker_pod_asks_for_exactly_one_gpu_and_nothing_else_does() -> None:
    gpus = {(workload, c["name"]): c.get("resources", {}).get("limits", {}).get(GPU)
            for workload, pod in pods().items() for c in containers(pod)}
    assert {key: int(value) for key, value in gpus.items() if value is not None} == {("workers", "worker"): 1}
    worker = container(pods()["workers"], "worker")
    assert worker["resources"].get("requests", {}).get(GPU, 1) == 1  # a request, if any, equals the limit
    assert GPU in {t["key"] for t in pods()["workers"].get("tolerations", [])}


def test_workers_are_an_indexed_job_that_retries_a_crashed_worker() -> None:
    job = find("Job", "workers")["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] >= 1  # one pod per GPU, each index done once
    # A crash (exit 1, SIGKILL) gets a new pod; podFailurePolicy and backoffLimitPerIndex need Never.
    assert job["template"]["spec"]["restartPolicy"] == "Never" and job["backoffLimitPerIndex"] >= 1
    rules = job["podFailurePolicy"]["rules"]
    fail_job = [rule["onExitCodes"] for rule in rules if rule["action"] == "FailJob"]
    assert fail_job == [{"containerName": "worker", "operator": "In", "values": [2]}]  # bad input only
    command = container(job["template"]["spec"], "worker")["command"]
    assert command[:5] == COMPOSE["worker"]["command"][:5]  # python -m search.worker --spec studies/...
    # The pid-based default seed is the same in every pod (PID 1): the index is not.
    assert command[command.index("--sampler-seed") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert not any(arg.startswith(("--storage", "--device")) for arg in command)


def test_the_password_lives_only_in_the_secret() -> None:
    secret = find("Secret", "fast-mnist-db")["stringData"]
    password = secret["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"CHANGE_ME", password), "secret.yaml must hold the placeholder, never a password"
    url = make_url(secret["OPTUNA_STORAGE"])
    assert (url.drivername, url.username, url.password, url.database) == (
        "postgresql+psycopg", secret["POSTGRES_USER"], password, secret["POSTGRES_DB"])
    service = find("Service", "postgres")
    assert (url.host, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    for file in set(MANIFESTS) - {"secret.yaml"}:
        text = (K8S / file).read_text()
        assert password not in text and not re.search(r"://[^\s:/@]*:[^\s@/]*@", text), file
    # Nothing secret as a literal env value anywhere.
    literal = [(workload, c["name"], name) for workload, pod in pods().items() for c in containers(pod)
               for name, var in env(c).items()
               if re.search(r"PASSWORD|SECRET|STORAGE", name) and "value" in var]
    assert literal == []


def test_the_storage_url_and_credentials_come_from_the_secret() -> None:
    secret = find("Secret", "fast-mnist-db")
    refs = {(workload, c["name"], name): var["valueFrom"]["secretKeyRef"]
            for workload, pod in pods().items() for c in containers(pod)
            for name, var in env(c).items() if "secretKeyRef" in var.get("valueFrom", {})}
    assert {ref["name"] for ref in refs.values()} == {secret["metadata"]["name"]}
    assert all(key == ref["key"] and key in secret["stringData"] for (_, _, key), ref in refs.items())
    # Every container of the project's image talks to Optuna through $OPTUNA_STORAGE, but data-init.
    users = {(workload, c["name"]) for workload, pod in pods().items() if workload != "postgres"
             for c in containers(pod) if c["name"] != "data-init"}
    assert users == {key[:2] for key in refs if key[2] == "OPTUNA_STORAGE"}
    postgres = {key[2] for key in refs if key[0] == "postgres"}
    assert postgres == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def test_the_dashboard_is_reachable_only_inside_the_cluster() -> None:
    service = find("Service", "dashboard")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    services = [obj["spec"].get("type", "ClusterIP") for _, obj in OBJECTS if obj["kind"] == "Service"]
    assert set(services) == {"ClusterIP"} and not any(obj["kind"] == "Ingress" for _, obj in OBJECTS)
    assert not any(pod.get("hostNetwork") or any("hostPort" in port for c in containers(pod)
                                                  for port in c.get("ports", []))
                   for pod in pods().values())
    deployment = find("Deployment", "dashboard")["spec"]
    assert service["selector"].items() <= deployment["template"]["metadata"]["labels"].items()
    dashboard = container(deployment["template"]["spec"], "dashboard")
    assert service["ports"][0]["targetPort"] in {port["name"] for port in dashboard["ports"]}
    assert dashboard["command"][:3] == ["python", "-m", "search.dashboard"]
    assert dashboard["command"][dashboard["command"].index("--host") + 1] == "0.0.0.0"  # the pod's address


def test_postgres_runs_as_in_compose_on_a_persistent_volume() -> None:
    statefulset = find("StatefulSet", "postgres")["spec"]
    postgres = container(statefulset["template"]["spec"], "postgres")
    # args (not command): the image's entrypoint initialises the database first
    assert "command" not in postgres and postgres["args"] == COMPOSE["postgres"]["command"]
    assert "idle_in_transaction_session_timeout=60s" in postgres["args"]
    claims = {claim["metadata"]["name"] for claim in statefulset["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in postgres["volumeMounts"]}
    assert mounts.items() & {(claim, "/var/lib/postgresql/data") for claim in claims}
    assert find("Service", "postgres")["spec"]["selector"].items() <= (
        statefulset["template"]["metadata"]["labels"].items())


def test_tables_are_made_once_before_the_workers_and_the_dashboard() -> None:
    db_init = find("Job", "db-init")["spec"]["template"]["spec"]
    assert [c["command"] for c in db_init["containers"]] == [COMPOSE["db-init"]["command"]]
    waits = {name: container(pods()[name], "wait-for-tables")["command"] for name in ("workers", "dashboard")}
    assert waits["workers"] == waits["dashboard"]
    # first, so nothing in the pod opens the storage before the tables exist
    assert {pods()[name]["initContainers"][0]["name"] for name in waits} == {"wait-for-tables"}


def test_workers_load_mnist_into_their_own_volume_at_the_images_path() -> None:
    pod = pods()["workers"]
    data_init = container(pod, "data-init")
    assert data_init["command"] == COMPOSE["data-init"]["command"]
    mnist_data = re.search(r"\bMNIST_DATA=(\S+)", DOCKERFILE)
    assert mnist_data, "the Dockerfile sets no MNIST_DATA"

    def mounts(c: Obj) -> set[tuple[str, str]]:
        return {(m["name"], m["mountPath"]) for m in c.get("volumeMounts", [])}

    shared = mounts(data_init) & mounts(container(pod, "worker"))
    assert {path for _, path in shared} == {mnist_data[1]}
    assert {v["name"]: v for v in pod["volumes"]}[shared.pop()[0]].get("emptyDir") is not None


def test_the_project_image_runs_as_its_unprivileged_user() -> None:
    uid = re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE)
    assert uid
    for name, pod in pods().items():
        if name != "postgres":
            context = pod["securityContext"]
            assert (context["runAsNonRoot"], context["runAsUser"]) == (True, int(uid[1])), name


def test_the_init_commands_work_on_a_real_storage(tmp_path: Path) -> None:
    """wait-for-tables waits while there are no tables and ends once db-init's command made them."""
    environment = {**os.environ, "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}"}

    def run(command: list[str]) -> subprocess.Popen[str]:
        assert command[0] == "python"
        return subprocess.Popen([sys.executable, *command[1:]], env=environment, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    wait = run(container(pods()["workers"], "wait-for-tables")["command"])
    try:
        assert wait.stdout is not None
        assert wait.stdout.readline().startswith("waiting for db-init"), "it did not wait"
        db_init = run(find("Job", "db-init")["spec"]["template"]["spec"]["containers"][0]["command"])
        assert db_init.wait(timeout=120) == 0, db_init.communicate()[0]
        assert wait.wait(timeout=60) == 0  # it polls every 3 s
    finally:
        wait.kill()
        wait.wait()
