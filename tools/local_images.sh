#!/usr/bin/env bash
# Builds, with no image registry, local stand-ins for the two images docker-compose.yml pulls:
#
#   $PY_IMAGE (for python:3.11-slim, pass as BASE_IMAGE): Debian bookworm's Python 3.11 in a venv on
#       PATH, so `python` and `pip` work as in python:3.11-slim, with torch, torchvision and every
#       dependency of the project already installed; pip in it is offline (no-index), so the
#       Dockerfile's two pip steps resolve from what is there (setuptools for the build included).
#   $PG_IMAGE (for postgres:16, pass as POSTGRES_IMAGE): Debian's PostgreSQL 15 behind
#       tools/postgres_entrypoint.sh, which does what compose uses of the official image.
#
# Both start from a debootstrap of bookworm turned into an image by `docker import`. Needs root
# (debootstrap), Docker, a Debian mirror, and pip's sources as the host's pip is configured. Usage:
#   sudo tools/local_images.sh        # then see docs/compose.md; PY_IMAGE= or PG_IMAGE= skips one
set -euo pipefail
cd "$(dirname "$0")/.."

PY_IMAGE=${PY_IMAGE-fast-mnist/python:3.11-bookworm}
PG_IMAGE=${PG_IMAGE-fast-mnist/postgres:15-bookworm}
ROOTFS=${ROOTFS:-/var/tmp/fast-mnist-rootfs}   # reused when it exists: debootstrap takes a minute
WHEELS=${WHEELS:-/var/tmp/fast-mnist-wheels}   # reused too: torch's CUDA wheels are several GB
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-.venv/bin/python}             # the host's pip: its index, mirror and proxy settings
TORCH=${TORCH:-torch==2.14.1 torchvision==0.29.1}  # the Dockerfile's defaults
BASE=fast-mnist/bookworm:base
step() { printf '== %s: %s\n' "$(date +%T)" "$*"; }

if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    step "debootstrap bookworm into $ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >/dev/null
fi
step "docker import $BASE"
tar -C "$ROOTFS" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$BASE"

# A build container cannot see this host's /etc/hosts, where a proxy or mirror may be named; the
# mirror's address, looked up here, goes in with --add-host. Its network is this host's (apt needs it).
mirror_host=$(sed -E 's#^[a-z]+://([^/:]+).*#\1#' <<<"$MIRROR")
mirror_ip=$(getent ahostsv4 "$mirror_host" | awk 'NR == 1 {print $1}' || true)
net=(--network host ${mirror_ip:+--add-host "$mirror_host:$mirror_ip"})

if [ -n "$PY_IMAGE" ]; then
    # pip runs here, on the host, where its sources are; the container installs offline from the
    # download. The host venv's versions constrain it, so the image runs what the tests ran.
    step "pip download into $WHEELS"
    mkdir -p "$WHEELS"
    deps=$("$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
    "$PYTHON" -m pip freeze --exclude-editable | grep -v '^#' >"$WHEELS/constraints.txt"
    # shellcheck disable=SC2086  # $TORCH is two requirements
    "$PYTHON" -m pip download -q -d "$WHEELS" -c "$WHEELS/constraints.txt" $TORCH $deps "setuptools>=68" wheel \
        2> >(grep -v 'is neither a file nor a directory' >&2)   # noise from file:// indexes
    step "install into a venv in $PY_IMAGE"
    docker rm -f fast-mnist-py-build >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    docker run --name fast-mnist-py-build -v "$WHEELS:/wheels:ro" "$BASE" bash -euc '
        python3 -m venv /opt/venv
        /opt/venv/bin/pip install -q --no-cache-dir --no-index -f /wheels -c /wheels/constraints.txt "$@"
        mkdir /opt/wheels && cp /wheels/setuptools-*.whl /wheels/wheel-*.whl /opt/wheels/
        printf "[global]\nno-index = true\nfind-links = /opt/wheels\n" >/etc/pip.conf' \
        sh $TORCH $deps
    docker commit \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python"]' fast-mnist-py-build "$PY_IMAGE" >/dev/null
    docker rm fast-mnist-py-build >/dev/null
fi

if [ -n "$PG_IMAGE" ]; then
    step "apt-get install postgresql-15 into $PG_IMAGE"
    docker rm -f fast-mnist-pg-build >/dev/null 2>&1 || true
    # create_main_cluster = false: the cluster is made by the entrypoint, in the volume, on first start.
    docker run --name fast-mnist-pg-build "${net[@]}" "$BASE" bash -euc '
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends postgresql-15 >/dev/null
        apt-get clean && rm -rf /var/lib/apt/lists/*'
    docker commit fast-mnist-pg-build fast-mnist/postgres:apt >/dev/null
    docker rm fast-mnist-pg-build >/dev/null
    # The rest through a Dockerfile, since `docker commit --change` cannot set STOPSIGNAL. SIGINT is a
    # fast shutdown, as in the official image (SIGTERM would wait for every client to go).
    DOCKER_BUILDKIT=0 docker build -q -t "$PG_IMAGE" -f - tools >/dev/null <<'EOF'
FROM fast-mnist/postgres:apt
COPY postgres_entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
EOF
    docker rmi fast-mnist/postgres:apt >/dev/null   # only the tag goes: its layers are $PG_IMAGE's
fi
step done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^fast-mnist/'
