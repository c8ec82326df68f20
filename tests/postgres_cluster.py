"""A throwaway PostgreSQL cluster of a test's own, for the tests that stop, restart or cut off the
database: the shared server (and every test using it meanwhile, in parallel) never notices.

initdb with trust auth and no fsync, one listen address and a free port, the socket in the cluster's
own folder; run as the `postgres` OS user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))  # Debian's server binaries, newest last


def missing() -> str | None:
    """Why no cluster can be made here, or None."""
    if not BIN:
        return "needs PostgreSQL's server binaries (/usr/lib/postgresql/N/bin)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "needs runuser, to run PostgreSQL as its own user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "needs the `postgres` OS user, to run PostgreSQL"
    return None


@dataclass(frozen=True)
class Cluster:
    folder: Path
    address: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/{database}"

    def run(self, program: str, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, str(Path(BIN[-1]) / program), *args], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        options = (f"-c listen_addresses={self.address} -c port={self.port} "
                   f"-c unix_socket_directories={self.folder} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-t", "60",
                 "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server down for the body, and up again afterwards, even when the body fails."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@contextlib.contextmanager
def postgres_cluster(database: str, address: str = "127.0.0.1", allow: str | None = None
                     ) -> Iterator[tuple[str, Cluster]]:
    """A running cluster holding an empty `database`, listening on `address` (and accepting clients
    from the network `allow`, such as "10.1.2.0/24", besides loopback): yields (its URL, the Cluster)."""
    folder = Path(tempfile.mkdtemp(prefix="fms-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    with socket.create_server((address, 0)) as probe:  # a free port on that address
        port = probe.getsockname()[1]
    cluster = Cluster(folder, address, port)
    started = False
    try:
        cluster.run("initdb", "-D", str(folder / "data"), "--auth=trust", "-U", "postgres", "--no-sync",
                    "--no-instructions")
        if allow:
            with (folder / "data" / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {allow} trust\n")
        started = True  # from here on, stop it (a failed start leaves nothing to stop)
        cluster.start()
        with psycopg.connect(f"postgresql://postgres@{address}:{port}/postgres", autocommit=True,
                             connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        yield cluster.url(database), cluster
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
