#!/bin/sh
# Entrypoint of the local Postgres image (tools/local_images.sh): what docker-compose.yml relies on in
# the official postgres image's docker-entrypoint.sh, and nothing more. On an empty $PGDATA it makes a
# cluster whose superuser is $POSTGRES_USER with password $POSTGRES_PASSWORD and a database
# $POSTGRES_DB, then runs the server on 5432 on every container address, TCP with password (scram).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"

if [ "$(id -u)" = 0 ]; then
    # A fresh named volume is root's; the server refuses to run as root, so hand it over and re-exec.
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The password goes through a file, never the command line (ps would show it).
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    # As the official image does: create the database on a server that listens on the Unix socket
    # only, so a client (or the healthcheck's pg_isready -h 127.0.0.1) sees TCP only once it is done.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "initialised $PGDATA: user $POSTGRES_USER, database $POSTGRES_DB"
fi

# As in the official image, the command is `postgres [server options]`.
if [ "${1:-}" = postgres ]; then shift; fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
