#!/usr/bin/env bash
# docker-compose.yml for real, on CPUs: Postgres, 2 workers on studies/smoke.toml (tools/compose.cpu.yml)
# and the dashboard. Checks that every trial ends accounted for, that the dashboard answers, and that
# a worker killed mid-trial is restarted by its restart policy while its trial turns FAILED and is
# run again; then removes everything (`down -v`). Exit 0 when all of that held. docs/compose.md.
#
#   tools/compose_smoke.sh    # MNIST_HOST_DIR=folder holding MNIST/raw (default ../shared/mnist, next to the repository)
#
# BASE_IMAGE / POSTGRES_IMAGE choose the base images; by default tools/local_images.sh's when they
# exist (no registry needed), else python:3.11-slim and postgres:16.
set -euo pipefail
cd "$(dirname "$0")/.."

project=${SMOKE_PROJECT:-fast-mnist-smoke}   # its own containers and volumes, beside any real deployment
pg_port=${SMOKE_POSTGRES_PORT:-55432}        # not 5432, where the host may run its own Postgres
dash_port=${SMOKE_DASHBOARD_PORT:-58080}
local_py=fast-mnist/python:3.11-bookworm local_pg=fast-mnist/postgres:15-bookworm
have() { docker image inspect "$1" >/dev/null 2>&1; }
base_image=${BASE_IMAGE:-$(have $local_py && echo $local_py || echo python:3.11-slim)}
postgres_image=${POSTGRES_IMAGE:-$(have $local_pg && echo $local_pg || echo postgres:16)}
say() { printf '== %s %s\n' "$(date +%T.%2N)" "$*"; }
fail() { say "FAILED: $*"; compose ps -a; compose logs --tail 30 worker; exit 1; }

# The .env lives in a temporary folder, not the repository: a fresh random password every run.
tmp=$(mktemp -d)
cat >"$tmp/.env" <<EOF
POSTGRES_USER=smoke
POSTGRES_PASSWORD=$(openssl rand -hex 24)
POSTGRES_DB=smoke
POSTGRES_PORT=$pg_port
DASHBOARD_PORT=$dash_port
BASE_IMAGE=$base_image
POSTGRES_IMAGE=$postgres_image
MNIST_HOST_DIR=${MNIST_HOST_DIR:-$(cd .. && pwd)/shared/mnist}
WORKER_TRIALS=${WORKER_TRIALS:-10}
EOF
compose() { docker compose -p "$project" --env-file "$tmp/.env" -f docker-compose.yml -f tools/compose.cpu.yml "$@"; }
trap 'say "down -v"; compose down -v --remove-orphans >/dev/null 2>&1; rm -rf "$tmp"' EXIT

# The classic builder: `compose build` wants buildx, and BuildKit would fetch the Dockerfile's
# `# syntax=` frontend from a registry. Same Dockerfile, same tag compose then runs with --no-build.
say "docker build (BASE_IMAGE=$base_image)"
start=$SECONDS
DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE="$base_image" -t fast-mnist-search:local . >/dev/null
build_s=$((SECONDS - start))

say "up: postgres ($postgres_image), db-init, data-init, 2 workers, dashboard"
start=$SECONDS
compose up -d --no-build --scale worker=2 2>"$tmp/up.log" || { cat "$tmp/up.log"; fail "compose up"; }
up_s=$((SECONDS - start))

# One Python, run in the dashboard container (it has optuna and $OPTUNA_STORAGE): no host packages.
query() { compose exec -T dashboard python - "$@" <<'EOF'
import os, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
trials = optuna.load_study(study_name="smoke", storage=os.environ["OPTUNA_STORAGE"]).get_trials(deepcopy=False)
what = sys.argv[1]
if what == "killed":  # that worker's trials failed by the stale check (workers write a fail_reason)
    print(*(t.number for t in trials if t.state.name == "FAIL" and "fail_reason" not in t.user_attrs
            and t.user_attrs.get("worker", {}).get("host") == sys.argv[2]))
elif what == "states":
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(len(trials), *(f"{k}={v}" for k, v in sorted(states.items())))
elif what == "retry":  # the killed trial's state and fail_reason, and the trials that re-ran it
    killed = next(t for t in trials if t.number == int(sys.argv[2]))
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    print(killed.state.name, killed.user_attrs.get("fail_reason", "-"), *(
        f"{t.number}:{t.state.name}:{'same-params' if t.params == killed.params else 'other-params'}:"
        f"history={t.system_attrs.get('retry_history')}" for t in retries))
    print(f"trial {killed.number} started {killed.datetime_start:%T.%f}"[:-4],
          f"failed {killed.datetime_complete:%T.%f}"[:-4], f"params {killed.params};", *(
              f"trial {t.number} started {t.datetime_start:%T.%f}"[:-4]
              + f" in container {t.user_attrs['worker']['host']}" for t in retries))
EOF
}

# Kill a worker mid-trial, as a crash or the OOM killer would: SIGKILL to its process from outside.
# Not `docker kill`: Docker counts that as a manual stop, and a restart policy leaves it stopped.
# The victim: the worker of the trial that started last, once that trial has run less than half as
# long as the finished ones took (psql answers in a fraction of a second; Python would take two).
# Which trial it was is read afterwards: the one of its trials that the stale check failed.
pick="select (a.value_json::json)->>'host', extract(epoch from now() at time zone 'UTC' - t.datetime_start),
      (select avg(extract(epoch from datetime_complete - datetime_start)) from trials where state = 'COMPLETE')
      from trials t join trial_user_attributes a on a.trial_id = t.trial_id and a.key = 'worker'
      where t.state = 'RUNNING' order by t.datetime_start desc limit 1"
say "waiting for a trial to finish, then for one to start"
host= age= mean=
for _ in $(seq 600); do
    read -r host age mean <<<"$(compose exec -T postgres psql -U smoke -d smoke -AtF ' ' -c "$pick" 2>/dev/null)" || true
    [ -n "$mean" ] && awk "BEGIN {exit !($age < $mean / 2)}" && break
    sleep 0.2
done
[ -n "$mean" ] || fail "no trial finished"
pid=$(docker inspect -f '{{.State.Pid}}' "$host")
if [ "$(id -u)" = 0 ]; then kill -KILL "$pid"; else
    docker run --rm --pid host --user 0 --entrypoint kill fast-mnist-search:local -KILL "$pid"; fi
container=$(docker inspect -f '{{.Name}}' "$host")
say "killed ${container#/} (pid $pid on this host) ${age:0:4} s into its trial (finished ones took ${mean:0:4} s)"

for _ in $(seq 60); do
    read -r restarts status <<<"$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' "$host")"
    [ "$restarts" -ge 1 ] && [ "$status" = running ] && break
    sleep 1
done
[ "$restarts" -ge 1 ] || fail "the killed worker was not restarted"
say "${container#/} restarted by its restart policy (RestartCount $restarts)"

say "waiting for both workers to finish their trials"
for _ in $(seq 900); do
    [ -z "$(compose ps -q --status running --status restarting worker)" ] && break
    sleep 2
done
exits=$(compose ps -a --format '{{.Name}} exit {{.ExitCode}}' worker | sort | paste -sd ' ')
[ -z "$(compose ps -q --status running --status restarting worker)" ] || fail "workers still running"
[ "$(compose ps -a --format '{{.ExitCode}}' worker | sort -u)" = 0 ] || fail "a worker failed: $exits"

read -r total states <<<"$(query states)"
say "trials: $total ($states)"
# Every trial accounted for: finished or FAILED, nothing RUNNING or WAITING left behind.
counted=$(tr ' ' '\n' <<<"$states" | awk -F= '$1 ~ /^(COMPLETE|PRUNED|FAIL)$/ {n += $2} END {print n + 0}')
[ "$counted" = "$total" ] || fail "$((total - counted)) trials neither finished nor failed"

read -r trial <<<"$(query killed "$host")" || true
[ -n "$trial" ] || fail "no trial of ${container#/} was failed by the stale check"
{ read -r killed_state reason retries; read -r times; } <<<"$(query retry "$trial")"
say "trial $trial: $killed_state (fail_reason $reason); re-run as $retries"
say "times (UTC): $times"
[ "$killed_state" = FAIL ] || fail "trial $trial is $killed_state, not FAIL"
[[ "$retries" =~ :(COMPLETE|PRUNED):same-params:history=\[$trial\] ]] || fail "trial $trial was not re-run"

code=$(curl -s -o /dev/null -w '%{http_code}' -L "http://127.0.0.1:$dash_port/")
studies=$(curl -s "http://127.0.0.1:$dash_port/api/studies" | grep -o '"study_name": *"smoke"' || true)
say "dashboard http://127.0.0.1:$dash_port/: HTTP $code, lists study smoke: ${studies:+yes}"
[ "$code" = 200 ] && [ -n "$studies" ] || fail "dashboard"

# Which cores the workers leased (one each, through the shared lock folder), first run and restart.
compose logs worker 2>/dev/null | sed -nE 's/^([^ |]+) *\|.*(device cpu \([^)]*\)).*/\1: \2/p' || true
compose ps -a --format '{{.Name}} is container {{.ID}}' worker
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(fast-mnist|${base_image%%:*}|${postgres_image%%:*})" || true
printf 'SUMMARY build %ss, up %ss, workers: %s; trials %s (%s); killed trial %s -> %s, re-run %s\n' \
    "$build_s" "$up_s" "$exits" "$total" "$states" "$trial" "$killed_state" "$retries"
