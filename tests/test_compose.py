"""Static checks of docker-compose.yml, Dockerfile, .env.example and the ignore files.

No Docker engine runs where these tests run, so nothing here starts a container. The compose file is
parsed with PyYAML, its ${VAR} substitutions are filled in from .env.example the way `docker compose`
fills them from .env, and the wiring is asserted. Each check is a function that returns the problems
it finds: the real files must give none, and a deliberately broken copy must give the expected one,
so that no check can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
GITIGNORE = ROOT / ".gitignore"
DOCKERIGNORE = ROOT / ".dockerignore"

STORAGE_CLIENTS = ("worker", "dashboard")  # the services that must share one storage URL
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN", re.IGNORECASE)
PLACEHOLDER = re.compile(r"change|example|placeholder|replace|your", re.IGNORECASE)
WHOLE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")
PG_DATA = "/var/lib/postgresql/data"


# ---------------------------------------------------------------------------------------------------
# Reading the files the way docker compose would


class MissingVariable(KeyError):
    pass


# $$ (a literal $), ${NAME}, ${NAME:-default} ${NAME-default} ${NAME:?err} ${NAME?err} ${NAME:+alt}, $NAME
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate_str(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"]
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        if value is None or (op == ":?" and not value):
            # compose would warn and use "" (or stop, for ?); here an unknown name is a bug in the file
            raise MissingVariable(f"${{{name}}} is not defined in .env.example ({arg or 'no message'})")
        return value

    return _INTERPOLATION.sub(substitute, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip().strip("'\"")
    return env


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def services(compose: dict) -> dict[str, dict]:
    return compose.get("services") or {}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(arg) for arg in cmd]


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry.get("target", ""))))
        else:
            source, _, rest = str(entry).partition(":")
            mounts.append((source, rest.partition(":")[0]) if rest else ("", source))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


# ---------------------------------------------------------------------------------------------------
# The checks: each returns a list of problems (empty = fine)

Check = Callable[[dict, dict[str, str]], list[str]]


def check_storage_url(raw: dict, env: dict[str, str]) -> list[str]:
    """Worker and dashboard get the same storage URL, and it is Postgres-through-psycopg at `postgres`."""
    compose = interpolate(raw, env)
    svc = services(compose)
    problems, urls = [], {}
    for name in STORAGE_CLIENTS:
        if name not in svc:
            problems.append(f"no {name} service")
            continue
        given = [arg for arg in command(svc[name]) if "://" in arg]
        if "OPTUNA_STORAGE" in environment(svc[name]):
            given.append(environment(svc[name])["OPTUNA_STORAGE"])
        elif name == "worker":
            problems.append("worker has no OPTUNA_STORAGE in its environment")
        if name == "dashboard" and not any("://" in arg for arg in command(svc[name])):
            problems.append("dashboard command has no storage URL (optuna-dashboard takes it as an argument)")
        if not given:
            problems.append(f"{name} is given no storage URL")
        urls[name] = set(given)
    # every service that is handed a storage URL at all (the init jobs too) must get this same one
    for name, service in svc.items():
        if name not in urls and "OPTUNA_STORAGE" in environment(service):
            urls[name] = {environment(service)["OPTUNA_STORAGE"]}
    distinct = set().union(*urls.values()) if urls else set()
    if len(distinct) > 1:
        given = {name: sorted(values) for name, values in urls.items()}
        problems.append(f"services are not given the same storage URL: {given}")
    for url in sorted(distinct):
        parsed = make_url(url)
        if parsed.drivername != "postgresql+psycopg":
            problems.append(f"storage driver is {parsed.drivername!r}, not 'postgresql+psycopg'")
        if parsed.host != "postgres" or "postgres" not in svc:
            problems.append(f"storage host is {parsed.host!r}, not the compose service 'postgres'")
        if parsed.port not in (None, 5432):
            problems.append(f"storage port is {parsed.port}, not Postgres' 5432 inside the network")
        expected = (env.get("POSTGRES_USER"), env.get("POSTGRES_PASSWORD"), env.get("POSTGRES_DB"))
        if (parsed.username, parsed.password, parsed.database) != expected:
            problems.append("storage URL's user/password/database are not POSTGRES_USER/PASSWORD/DB")
    return problems


def check_postgres_healthcheck(raw: dict, env: dict[str, str]) -> list[str]:
    postgres = services(interpolate(raw, env)).get("postgres")
    if postgres is None:
        return ["no postgres service"]
    health = postgres.get("healthcheck") or {}
    test = health.get("test")
    if not test or health.get("disable"):
        return ["postgres has no healthcheck"]
    text = " ".join(test) if isinstance(test, list) else str(test)
    problems = []
    if "pg_isready" not in text:
        problems.append(f"postgres healthcheck does not run pg_isready: {text!r}")
    for name in ("POSTGRES_USER", "POSTGRES_DB"):
        # `$${VAR}` in the file reaches the container shell as `${VAR}`: checked against the container's
        # own credentials, not values frozen into the file
        if f"${{{name}}}" not in text and f"${name}" not in text:
            problems.append(f"postgres healthcheck does not use the container's ${name}")
    if "image" in postgres and not str(postgres["image"]).startswith("postgres:16"):
        problems.append(f"postgres image is {postgres['image']!r}, not postgres:16")
    return problems


def check_depends_on_healthy(raw: dict, env: dict[str, str]) -> list[str]:
    svc, problems = services(raw), []
    for name in STORAGE_CLIENTS:
        depends = (svc.get(name) or {}).get("depends_on") or {}
        condition = depends.get("postgres", {}).get("condition") if isinstance(depends, dict) else None
        if condition != "service_healthy":
            problems.append(f"{name} does not depend_on postgres with condition service_healthy")
    return problems


def check_ports_localhost(raw: dict, env: dict[str, str]) -> list[str]:
    problems = []
    for name, service in services(interpolate(raw, env)).items():
        if service.get("network_mode") == "host":
            problems.append(f"{name} uses network_mode: host (every port it opens is public)")
        for entry in service.get("ports") or []:
            if isinstance(entry, dict):
                if entry.get("host_ip") != "127.0.0.1":
                    problems.append(f"{name} publishes {entry} beyond 127.0.0.1")
            elif not str(entry).startswith("127.0.0.1:") or str(entry).count(":") != 2:
                problems.append(f"{name} publishes {entry!r} beyond 127.0.0.1")
    return problems


def check_postgres_volume(raw: dict, env: dict[str, str]) -> list[str]:
    compose = interpolate(raw, env)
    postgres = services(compose).get("postgres") or {}
    sources = [source for source, target in volume_mounts(postgres) if target.rstrip("/") == PG_DATA]
    if not sources:
        return [f"postgres keeps no volume at {PG_DATA}"]
    declared = compose.get("volumes") or {}
    return [f"postgres data source {source!r} is not a named volume declared under top-level volumes"
            for source in sources if not is_named_volume(source) or source not in declared]


def check_worker(raw: dict, env: dict[str, str]) -> list[str]:
    worker = services(raw).get("worker")
    if worker is None:
        return ["no worker service"]
    problems = []
    devices = (((worker.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices or []):
        problems.append("worker reserves no nvidia GPU (deploy.resources.reservations.devices)")
    if "container_name" in worker:
        problems.append("worker has a container_name, so --scale worker=N cannot run")
    if worker.get("ports"):
        problems.append("worker publishes ports, so --scale worker=N collides on them")
    if worker.get("restart") != "on-failure":
        problems.append(f"worker restart is {worker.get('restart')!r}, not 'on-failure'")
    if "build" not in worker:
        problems.append("worker is not built from the project Dockerfile")
    cmd = command(worker)
    if cmd[:3] != ["python", "-m", "search.worker"] or "studies/mnist_fast.toml" not in cmd:
        problems.append(f"worker command is not search.worker --spec studies/mnist_fast.toml: {cmd}")
    return problems


def check_mnist_volume(raw: dict, env: dict[str, str]) -> list[str]:
    """The worker mounts a named volume exactly at the image's $MNIST_DATA."""
    data_root = dockerfile_env(DOCKERFILE.read_text()).get("MNIST_DATA")
    if not data_root:
        return ["Dockerfile sets no MNIST_DATA"]
    compose = interpolate(raw, env)
    mounts = volume_mounts(services(compose).get("worker") or {})
    declared = compose.get("volumes") or {}
    if not any(is_named_volume(s) and s in declared and t.rstrip("/") == data_root for s, t in mounts):
        return [f"worker mounts no declared named volume at MNIST_DATA={data_root}"]
    return []


def check_no_literal_secrets(raw: dict, env: dict[str, str]) -> list[str]:
    """Secrets only as ${...} references: under secret-named keys, in URLs, and never the .env values."""
    problems = []
    known_secrets = [value for key, value in env.items() if SECRET_KEY.search(key) and value]

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET_KEY.search(str(key)) and not (
                    isinstance(value, str) and WHOLE_REFERENCE.fullmatch(value)
                ):
                    problems.append(f"{where}.{key} is a literal, not a ${{...}} reference")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{where}[{index}]")
        elif isinstance(node, str):
            assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", node, re.DOTALL)  # list-form env
            literal = assignment and not WHOLE_REFERENCE.fullmatch(assignment[2])
            if literal and SECRET_KEY.search(assignment[1]):
                problems.append(f"{where} sets {assignment[1]} to a literal, not a ${{...}} reference")
            userinfo = re.match(r"[a-z0-9+.-]+://([^@/]*)@", node)
            if userinfo and ":" in userinfo[1]:
                password = userinfo[1].partition(":")[2]
                if not WHOLE_REFERENCE.fullmatch(password):
                    problems.append(f"{where} has a literal password in a URL")
            problems.extend(f"{where} contains the value of a secret from .env"
                            for secret in known_secrets if secret in node)

    walk(raw, "compose")
    return problems


def check_env_example(raw: dict, env: dict[str, str]) -> list[str]:
    problems = []
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        if not env.get(name):
            problems.append(f".env.example does not set {name}")
    for key, value in env.items():
        if SECRET_KEY.search(key) and not PLACEHOLDER.search(value):
            problems.append(f".env.example {key} looks like a real secret, not a placeholder")
    try:
        interpolate(raw, env)
    except MissingVariable as error:
        problems.append(f"docker-compose.yml uses a variable .env.example does not define: {error}")
    return problems


# ---------------------------------------------------------------------------------------------------
# Dockerfile and ignore files (text in, problems out)


def dockerfile_env(text: str) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions(text):
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def check_dockerfile(text: str) -> list[str]:
    instructions = dockerfile_instructions(text)
    problems = []
    bases = [args for instruction, args in instructions if instruction == "FROM"]
    if not bases or bases[-1].split()[0] != "python:3.11-slim":
        problems.append(f"final base image is {bases[-1:]}, not python:3.11-slim")
    users = [args.split()[0] for instruction, args in instructions if instruction == "USER"]
    if not users:
        problems.append("Dockerfile has no USER: the container would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"Dockerfile's final USER is {users[-1]!r}")
    cmds = [args for instruction, args in instructions if instruction == "CMD"]
    if not cmds:
        problems.append("Dockerfile has no CMD")
    else:
        try:
            cmd = json.loads(cmds[-1])
        except json.JSONDecodeError:
            cmd = shlex.split(cmds[-1])
        if cmd[:3] != ["python", "-m", "search.worker"]:
            problems.append(f"Dockerfile CMD does not run search.worker: {cmd}")
    workdirs = [args for instruction, args in instructions if instruction == "WORKDIR"]
    if workdirs[-1:] != ["/app"]:
        problems.append(f"WORKDIR is {workdirs[-1:]}, not /app")
    if dockerfile_env(text).get("MNIST_DATA") != "/data/mnist":
        problems.append("Dockerfile does not set ENV MNIST_DATA=/data/mnist")
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    if not any(re.search(r"pip install\b.*\btorch\b", run) for run in runs):
        problems.append("Dockerfile does not pip install torch")
    if not any(re.search(r"pip install (?:\S+ )*\.(?:\s|$)", run) for run in runs):
        problems.append("Dockerfile does not `pip install .` the project")
    return problems


def ignores(text: str, name: str) -> bool:
    lines = {line.strip() for line in text.splitlines()}
    return bool(lines & {name, f"/{name}", f"**/{name}"}) and f"!{name}" not in lines


def check_ignore_files(gitignore: str, dockerignore: str) -> list[str]:
    problems = []
    if not ignores(gitignore, ".env"):
        problems.append(".gitignore does not ignore .env")
    if ignores(gitignore, ".env.example"):
        problems.append(".gitignore ignores .env.example")
    if not ignores(dockerignore, ".env"):
        problems.append(".dockerignore does not keep .env out of the image")
    return problems


# ---------------------------------------------------------------------------------------------------
# Fixtures and tests


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    assert ENV_EXAMPLE.is_file(), ".env.example is missing"
    return parse_env(ENV_EXAMPLE.read_text())


COMPOSE_CHECKS: list[Check] = [
    check_storage_url, check_postgres_healthcheck, check_depends_on_healthy, check_ports_localhost,
    check_postgres_volume, check_worker, check_mnist_volume, check_no_literal_secrets, check_env_example,
]


@pytest.mark.parametrize("check", COMPOSE_CHECKS, ids=lambda check: check.__name__)
def test_compose_passes(check: Check, raw: dict, env: dict[str, str]) -> None:
    assert check(raw, env) == []


def test_dockerfile_passes() -> None:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    assert check_dockerfile(DOCKERFILE.read_text()) == []


def test_ignore_files_pass() -> None:
    assert check_ignore_files(GITIGNORE.read_text(), DOCKERIGNORE.read_text()) == []


def test_storage_url_is_one_string_for_worker_and_dashboard(raw: dict, env: dict[str, str]) -> None:
    svc = services(interpolate(raw, env))
    worker = command(svc["worker"])
    worker_url = worker[worker.index("--storage") + 1]
    assert worker_url == environment(svc["worker"])["OPTUNA_STORAGE"] == command(svc["dashboard"])[-1]
    assert worker_url == "postgresql+psycopg://optuna:change-me@postgres:5432/optuna"


# --- the checks can fail: each mutation of the real files must be reported --------------------------


def replace_everywhere(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return node.replace(old, new)
    if isinstance(node, list):
        return [replace_everywhere(item, old, new) for item in node]
    if isinstance(node, dict):
        return {key: replace_everywhere(value, old, new) for key, value in node.items()}
    return node


def set_path(value: Any, *path: str | int) -> Callable[[dict], dict]:
    def mutate(compose: dict) -> dict:
        node = compose
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return compose
    return mutate


def delete_path(*path: str) -> Callable[[dict], dict]:
    def mutate(compose: dict) -> dict:
        node = compose
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return compose
    return mutate


def text_replace(old: str, new: str) -> Callable[[dict], dict]:
    return lambda compose: replace_everywhere(compose, old, new)


OTHER_DB = "postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/other"
COMPOSE_MUTATIONS = [
    ("dashboard-other-db", set_path(OTHER_DB, "services", "dashboard", "command", -1),
     check_storage_url, "same storage URL"),
    ("worker-no-env", delete_path("services", "worker", "environment"),
     check_storage_url, "no OPTUNA_STORAGE"),
    ("dashboard-no-url", set_path(["optuna-dashboard"], "services", "dashboard", "command"),
     check_storage_url, "dashboard command has no storage URL"),
    ("psycopg2-driver", text_replace("postgresql+psycopg:", "postgresql+psycopg2:"),
     check_storage_url, "storage driver"),
    ("host-localhost", text_replace("@postgres:5432", "@localhost:5432"), check_storage_url, "storage host"),
    ("no-healthcheck", delete_path("services", "postgres", "healthcheck"),
     check_postgres_healthcheck, "no healthcheck"),
    ("healthcheck-not-pg_isready", set_path(["CMD", "true"], "services", "postgres", "healthcheck", "test"),
     check_postgres_healthcheck, "pg_isready"),
    ("healthcheck-frozen-user",
     set_path(["CMD-SHELL", "pg_isready -U optuna -d $${POSTGRES_DB}"], "services", "postgres", "healthcheck",
              "test"),
     check_postgres_healthcheck, "$POSTGRES_USER"),
    ("worker-depends-list", set_path(["postgres"], "services", "worker", "depends_on"),
     check_depends_on_healthy, "worker does not depend_on"),
    ("dashboard-depends-started",
     set_path({"condition": "service_started"}, "services", "dashboard", "depends_on", "postgres"),
     check_depends_on_healthy, "dashboard does not depend_on"),
    ("postgres-all-interfaces", set_path(["5432:5432"], "services", "postgres", "ports"),
     check_ports_localhost, "beyond 127.0.0.1"),
    ("dashboard-0.0.0.0", set_path(["0.0.0.0:8080:8080"], "services", "dashboard", "ports"),
     check_ports_localhost, "beyond 127.0.0.1"),
    ("long-syntax-no-host-ip",
     set_path([{"target": 8080, "published": 8080}], "services", "dashboard", "ports"),
     check_ports_localhost, "beyond 127.0.0.1"),
    ("network-host", set_path("host", "services", "dashboard", "network_mode"),
     check_ports_localhost, "network_mode: host"),
    ("pg-bind-mount", set_path([f"./pgdata:{PG_DATA}"], "services", "postgres", "volumes"),
     check_postgres_volume, "not a named volume"),
    ("pg-volume-undeclared", delete_path("volumes", "pgdata"), check_postgres_volume, "not a named volume"),
    ("pg-no-volume", delete_path("services", "postgres", "volumes"), check_postgres_volume, "no volume"),
    ("worker-no-gpu", delete_path("services", "worker", "deploy"), check_worker, "GPU"),
    ("worker-container-name", set_path("worker", "services", "worker", "container_name"),
     check_worker, "container_name"),
    ("worker-ports", set_path(["127.0.0.1:9000:9000"], "services", "worker", "ports"), check_worker, "ports"),
    ("worker-restart-no", set_path("no", "services", "worker", "restart"), check_worker, "restart"),
    ("worker-other-module", set_path(["python", "-m", "search.other"], "services", "worker", "command"),
     check_worker, "worker command"),
    ("mnist-elsewhere", set_path(["mnist:/tmp/mnist"], "services", "worker", "volumes"),
     check_mnist_volume, "MNIST_DATA"),
    ("literal-password", set_path("hunter2", "services", "postgres", "environment", "POSTGRES_PASSWORD"),
     check_no_literal_secrets, "literal"),
    ("list-form-literal-password",
     set_path(["POSTGRES_USER=${POSTGRES_USER}", "POSTGRES_PASSWORD=hunter2"], "services", "postgres",
              "environment"),
     check_no_literal_secrets, "sets POSTGRES_PASSWORD to a literal"),
    ("password-in-url", text_replace(":${POSTGRES_PASSWORD}@", ":hunter2@"),
     check_no_literal_secrets, "literal password in a URL"),
    ("placeholder-value-in-file", text_replace("${POSTGRES_DB}", "change-me"),
     check_no_literal_secrets, "value of a secret"),
    ("unknown-variable", text_replace("${POSTGRES_DB}", "${POSTGRES_DATABASE}"),
     check_env_example, "does not define"),
]


@pytest.mark.parametrize(("mutate", "check", "expected"), [case[1:] for case in COMPOSE_MUTATIONS],
                         ids=[case[0] for case in COMPOSE_MUTATIONS])
def test_compose_check_catches(mutate: Callable[[dict], dict], check: Check, expected: str,
                               raw: dict, env: dict[str, str]) -> None:
    broken = mutate(copy.deepcopy(raw))
    assert broken != raw
    assert check(raw, env) == []
    problems = check(broken, env)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("changes", "expected"), [
    ({"POSTGRES_PASSWORD": "Xk9vQ2mLp7Rt"}, "looks like a real secret"),
    ({"POSTGRES_DB": ""}, "does not set POSTGRES_DB"),
])
def test_env_example_check_catches(changes: dict[str, str], expected: str, raw: dict,
                                   env: dict[str, str]) -> None:
    problems = check_env_example(raw, {**env, **changes})
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("\nUSER app\n", "\nUSER root\n", "final USER"),
    ("\nUSER app\n", "\n", "no USER"),
    ('"search.worker"', '"search.other"', "CMD does not run search.worker"),
    ("FROM python:3.11-slim", "FROM python:3.12-slim", "python:3.11-slim"),
    ("MNIST_DATA=/data/mnist", "MNIST_ROOT=/data/mnist", "MNIST_DATA"),
    ("WORKDIR /app", "WORKDIR /srv", "WORKDIR"),
    ("RUN pip install . ", "RUN pip install -r nothing.txt ", "pip install ."),
    ('"torch==${TORCH_VERSION}" ', "", "pip install torch"),
])
def test_dockerfile_check_catches(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = check_dockerfile(text.replace(old, new))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("gitignore", "dockerignore", "expected"), [
    ("", ".env\n", ".gitignore does not ignore .env"),
    (".env\n.env.example\n", ".env\n", ".gitignore ignores .env.example"),
    (".env\n", ".git/\n", ".dockerignore does not keep .env"),
    (".env\n", ".env\n!.env\n", ".dockerignore does not keep .env"),
])
def test_ignore_check_catches(gitignore: str, dockerignore: str, expected: str) -> None:
    assert any(expected in problem for problem in check_ignore_files(gitignore, dockerignore))


def test_interpolation_follows_compose() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert interpolate_str("$${A} ${A} $A", env) == "${A} x x"
    assert interpolate_str("${EMPTY:-d} ${EMPTY-d} ${UNSET:-d} ${A:+alt}", env) == "d  d alt"
    assert interpolate_str("${A:?must be set}", env) == "x"
    with pytest.raises(MissingVariable):
        interpolate_str("${UNSET:?must be set}", env)
    with pytest.raises(MissingVariable):
        interpolate_str("${UNSET}", env)
