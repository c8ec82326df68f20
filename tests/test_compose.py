"""docker-compose.yml as Compose itself reads it: `docker compose config` renders it with a throwaway
.env (no engine, no container) and the wiring that matters is asserted on the result. Without Compose
v2 those tests skip; the two security rules are also checked on the YAML as written, without it."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from studies.storage import engine_kwargs, parse_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PASSWORD = "pw-" + secrets.token_hex(8)  # a value the file cannot contain by chance
ENV = {"POSTGRES_USER": "fms_user", "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "fms_db"}


def compose_binary() -> list[str] | None:
    """`docker compose` or `docker-compose`, if it is Compose v2 (1.x cannot read `name:`)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        version = shutil.which(command[0]) and subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, timeout=60)
        if version and version.returncode == 0 and re.match(r"v?([2-9]|\d\d)\.", version.stdout.strip()):
            return command
    return None


COMPOSE = compose_binary()


OVERRIDABLE = ("POSTGRES_", "COMPOSE_", "BASE_IMAGE", "DASHBOARD_PORT", "PGBOUNCER_")


def render(env_file: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    if COMPOSE is None:
        pytest.skip("no Docker Compose v2 (`docker compose` plugin or `docker-compose` >= 2) on PATH")
    # Variables from the caller's shell would win over the env file.
    env = {k: v for k, v in os.environ.items() if not k.startswith(OVERRIDABLE)}
    options = [arg for file in (COMPOSE_FILE, *files) for arg in ("-f", str(file))]
    return subprocess.run([*COMPOSE, *options, "--env-file", str(env_file), "config", "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in ENV.items()))
    result = render(env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_published_ports_bind_loopback_only(services: dict[str, dict]) -> None:
    published = {name: [port.get("host_ip") for port in svc["ports"]]
                 for name, svc in services.items() if svc.get("ports")}
    assert published == {"postgres": ["127.0.0.1"], "dashboard": ["127.0.0.1"]}
    assert all(svc.get("network_mode") != "host" for svc in services.values())


def test_every_service_gets_the_one_storage_url_with_the_password_from_env(services: dict[str, dict]) -> None:
    """One database: the workers reach it through PgBouncer, db-init and the dashboard straight."""
    worker, dashboard = services["worker"]["command"], services["dashboard"]["command"]
    pooled = {worker[worker.index("--storage") + 1], services["worker"]["environment"]["OPTUNA_STORAGE"]}
    urls = {dashboard[-1]} | {svc["environment"]["OPTUNA_STORAGE"] for name, svc in services.items()
                              if "OPTUNA_STORAGE" in svc.get("environment", {}) and name != "worker"}
    assert len(urls) == 1 and len(pooled) == 1, (urls, pooled)
    url, through = make_url(urls.pop()), make_url(pooled.pop())
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432) and not url.query
    assert (through.drivername, through.host, through.port) == ("postgresql+psycopg", "pgbouncer", 5432)
    assert dict(through.query) == {"prepare_threshold": "none"}  # PgBouncer's transaction pooling
    for each in (url, through):
        assert (each.username, each.password, each.database) == ("fms_user", PASSWORD, "fms_db")
    pgbouncer = services["pgbouncer"]["environment"]
    assert [pgbouncer[key] for key in ("DB_HOST", "DB_NAME", "DB_USER")] == ["postgres", "fms_db", "fms_user"]
    # Every secret-looking variable of every service (postgres' own included) is the value from .env.
    passwords = {(name, key): value for name, svc in services.items()
                 for key, value in svc.get("environment", {}).items() if re.search(r"PASSWORD|SECRET", key)}
    assert ("postgres", "POSTGRES_PASSWORD") in passwords and set(passwords.values()) == {PASSWORD}, passwords


def test_a_missing_password_stops_compose(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_USER=u\nPOSTGRES_DB=d\n")
    result = render(tmp_path / ".env")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_env_example_defines_every_variable_with_a_placeholder_password() -> None:
    text = (ROOT / ".env.example").read_text()
    password = re.search(r"^POSTGRES_PASSWORD=(.*)$", text, re.MULTILINE)
    assert password and re.search(r"change|example|placeholder|replace|your", password[1], re.IGNORECASE)
    result = render(ROOT / ".env.example")
    assert result.returncode == 0 and "not set" not in result.stderr, result.stderr


def test_clients_wait_for_a_healthy_postgres_and_the_init_jobs(services: dict[str, dict]) -> None:
    test = " ".join(services["postgres"]["healthcheck"]["test"])
    # $${VAR}: the container's own credentials at check time, not values frozen into the file
    assert "pg_isready" in test and "${POSTGRES_USER}" in test and "${POSTGRES_DB}" in test
    conditions = {name: {dep: how["condition"] for dep, how in svc.get("depends_on", {}).items()}
                  for name, svc in services.items()}
    done, healthy = "service_completed_successfully", "service_healthy"
    assert conditions["db-init"] == {"postgres": healthy}
    assert conditions["dashboard"] == {"postgres": healthy, "db-init": done}
    assert conditions["pgbouncer"] == {"postgres": healthy}
    assert conditions["worker"] == {"postgres": healthy, "pgbouncer": healthy, "db-init": done,
                                    "data-init": done}


def test_worker_is_a_scalable_gpu_service(services: dict[str, dict]) -> None:
    worker = services["worker"]
    assert worker["command"][:5] == ["python", "-m", "search.worker", "--spec", "studies/mnist_fast.toml"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs both
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    # count: all (rendered -1): every replica sees every GPU, and --device auto spreads them
    assert [(d["driver"], d["count"]) for d in devices if "gpu" in d["capabilities"]] == [("nvidia", -1)]
    assert not any(arg.startswith("--device") for arg in worker["command"])
    restart = {name: svc.get("restart") for name, svc in services.items()}
    assert restart == {"postgres": "unless-stopped", "dashboard": "unless-stopped", "worker": "on-failure",
                       "db-init": "no", "data-init": "no", "pgbouncer": "unless-stopped"}


def test_data_lives_in_named_volumes_at_the_images_paths(services: dict[str, dict]) -> None:
    def mounts(name: str) -> set[tuple[str, str]]:
        return {(v["source"], v["target"]) for v in services[name]["volumes"] if v["type"] == "volume"}

    assert ("pgdata", "/var/lib/postgresql/data") in mounts("postgres")
    # data-init fills the very volume the workers read, at the image's $MNIST_DATA
    mnist_data = re.search(r"\bMNIST_DATA=(\S+)", (ROOT / "Dockerfile").read_text())
    assert mnist_data, "the Dockerfile sets no MNIST_DATA"
    assert ("mnist", mnist_data[1]) in mounts("worker") & mounts("data-init")


def test_workers_share_one_lock_folder_the_image_user_owns(services: dict[str, dict]) -> None:
    worker = services["worker"]
    lock_dir = worker["environment"]["FAST_MNIST_LOCK_DIR"]
    mounted = {(v["type"], v["source"]) for v in worker["volumes"] if v["target"] == lock_dir}
    assert mounted == {("volume", "locks")}
    dockerfile = (ROOT / "Dockerfile").read_text()
    # made in the image and chowned to its user, so the empty volume starts out writable by it
    assert re.search(rf"mkdir -p [^\n]*{re.escape(lock_dir)}\b", dockerfile)
    assert re.search(r"chown -R app:app /data\b", dockerfile) and lock_dir.startswith("/data/")


def test_base_images_and_ports_default_to_the_official_ones(services: dict[str, dict]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert services["pgbouncer"]["image"].startswith("edoburu/pgbouncer:")
    assert services["worker"]["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim"}
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim\nFROM \$\{BASE_IMAGE\}$",
                     (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    published = {name: [port["published"] for port in svc.get("ports", [])] for name, svc in services.items()}
    assert (published["postgres"], published["dashboard"]) == (["5432"], ["8080"])


def test_base_images_and_ports_are_overridable_and_stay_on_loopback(tmp_path: Path) -> None:
    env = {**ENV, "POSTGRES_IMAGE": "local/pg:15", "BASE_IMAGE": "local/py:3.11", "POSTGRES_PORT": "55432",
           "DASHBOARD_PORT": "58080", "PGBOUNCER_IMAGE": "local/pgbouncer:1.18"}
    (tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    result = render(tmp_path / ".env")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["postgres"]["image"] == "local/pg:15"
    assert services["pgbouncer"]["image"] == "local/pgbouncer:1.18"
    bases = {svc["build"]["args"]["BASE_IMAGE"] for svc in services.values() if "build" in svc}
    assert bases == {"local/py:3.11"}
    ports = {name: [(p["host_ip"], p["published"]) for p in svc["ports"]]
             for name, svc in services.items() if svc.get("ports")}
    assert ports == {"postgres": [("127.0.0.1", "55432")], "dashboard": [("127.0.0.1", "58080")]}


def test_cpu_override_drops_the_gpu_and_runs_the_smoke_spec(tmp_path: Path) -> None:
    """tools/compose.cpu.yml, which tools/compose_smoke.sh runs: no GPU reservation, real MNIST from a
    read-only host folder with the tensor cache in the writable volume."""
    (tmp_path / ".env").write_text("".join(f"{key}={value}\n" for key, value in ENV.items())
                                   + f"MNIST_HOST_DIR={tmp_path}\n")
    result = render(tmp_path / ".env", ROOT / "tools" / "compose.cpu.yml")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    worker = services["worker"]
    assert "deploy" not in worker or not worker["deploy"].get("resources")
    command = worker["command"]
    assert command[command.index("--spec") + 1] == "studies/smoke.toml"
    assert command[command.index("--device") + 1] == "cpu"
    for name in ("worker", "data-init"):
        svc = services[name]
        host = [v for v in svc["volumes"] if v["type"] == "bind"]
        assert [(v["source"], v["target"], v.get("read_only")) for v in host] == [
            (str(tmp_path), svc["environment"]["MNIST_DATA"], True)]
        assert svc["environment"]["FAST_MNIST_CACHE"].startswith("/data/mnist/")  # in the `mnist` volume
    assert worker["restart"] == "on-failure" and worker["environment"]["FAST_MNIST_LOCK_DIR"] == "/data/locks"


def test_image_runs_as_an_unprivileged_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def test_env_stays_out_of_git_and_the_image() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index"]
    ignored = {name: subprocess.run([*check, name]).returncode for name in (".env", ".env.example")}
    assert ignored == {".env": 0, ".env.example": 1}
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_file_as_written_has_no_literal_password_and_no_public_port() -> None:
    """Needs no Compose: the two security rules, on the YAML before interpolation."""
    text = COMPOSE_FILE.read_text()
    for name, svc in yaml.safe_load(text)["services"].items():
        for port in svc.get("ports", []):
            loopback = (port.get("host_ip") == "127.0.0.1" if isinstance(port, dict)
                        else re.match(r"127\.0\.0\.1:[^:]+:", str(port)))
            assert loopback, (name, port)
        password = (svc.get("environment") or {}).get("POSTGRES_PASSWORD", "${POSTGRES_PASSWORD}")
        assert password.startswith("${POSTGRES_PASSWORD"), name
    assert set(re.findall(r"://[^:/@\s]*:([^@\s]*)@", text)) == {"${POSTGRES_PASSWORD}"}


def test_workers_go_through_pgbouncer_in_transaction_pooling_as_written() -> None:
    """Needs no Compose: the pooler's wiring on the YAML before interpolation. The workers' URL is one
    studies/storage.py turns prepared statements off for; the pooler's server connections fit in
    Postgres's 100, less the 3 kept for superusers, less db-init's and the dashboard's pools (3 each,
    studies/storage.py); it publishes no port."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    pgbouncer = services["pgbouncer"]
    assert pgbouncer["image"].startswith("${PGBOUNCER_IMAGE:-")
    env = pgbouncer["environment"]
    assert env["POOL_MODE"] == "transaction" and env["DB_HOST"] == "postgres"
    assert env["DB_PASSWORD"] == "${POSTGRES_PASSWORD}" and "ports" not in pgbouncer
    assert int(env["DEFAULT_POOL_SIZE"]) <= int(env["MAX_DB_CONNECTIONS"]) <= 100 - 3 - 2 * 3
    assert int(env["MAX_CLIENT_CONN"]) >= 2 * 64  # a 64-worker fleet, 2 connections each (docs/cluster.md)
    assert pgbouncer["depends_on"]["postgres"]["condition"] == "service_healthy"

    worker = services["worker"]
    url = worker["command"][worker["command"].index("--storage") + 1]
    assert worker["environment"]["OPTUNA_STORAGE"] == url
    assert worker["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    for variable, value in (("POSTGRES_USER", "u"), ("POSTGRES_PASSWORD", "p"), ("POSTGRES_DB", "d")):
        url = url.replace(f"${{{variable}}}", value)
    parsed = parse_url(url)
    assert (parsed.host, parsed.port) == ("pgbouncer", 5432)
    assert engine_kwargs(parsed)["connect_args"]["prepare_threshold"] is None
    for name in ("db-init", "dashboard"):  # one client each; optuna-dashboard's CLI takes no typed options
        assert "@postgres:5432/" in services[name]["environment"]["OPTUNA_STORAGE"]
