"""A network partition between real hosts: PostgreSQL on a bridge in the root network namespace, and
two workers (`python -m search.worker`) in network namespaces A and B, each host linked to the
bridge by a veth pair. In the middle of a trial, A is cut off for longer than the grace period:
every IP packet between A and the rest is dropped where it comes in (nftables, netdev ingress, on
both ends of A's link), so packets vanish, as when a cable, a switch or a router between them
dies: no refusal, no reset, no error at either sender, and ARP still passes. Then A is let back.

    root namespace: a private PostgreSQL cluster on 10.R.S.1, the bridge's address
        bridge --veth-- namespace A: eth0 10.R.S.2, worker A   (cut off, then back)
        bridge --veth-- namespace B: eth0 10.R.S.3, worker B

Needs root, iproute2, nftables and PostgreSQL's server binaries (Debian's /usr/lib/postgresql/N/bin);
skips where it lacks them, or where network namespaces or the netdev hook cannot be had (a
container without CAP_NET_ADMIN, an old kernel). Every name carries a random tag, so two runs never
clash; the workers, the cluster, the namespaces, the links and the nftables table go in the
fixtures' teardown, whatever happened. The test prints a one-line summary (-s shows it), which
docs/faults.md's fault table quotes.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests import postgres_cluster
from tests.search.workers import (
    FAST_HEARTBEAT,
    ONE_CORE,
    STARTUP,
    WorkerProcess,
    account,
    budget,
    spec_file,
)

pytestmark = pytest.mark.slow  # two real workers on the real MNIST, one cut off for ~20 s: ~45 s

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A storage call of the cut-off worker that returned an error (rather than waiting on the dead
# connection for TCP's retransmissions, minutes): its heartbeat thread's, or its trial loop's.
NOTICED = re.compile(r"heartbeat of trial id \d+ failed|database unreachable")


def sh(*command: str, timeout: float = 30, stdin: str | None = None) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout,
                          input=stdin).stdout


# -- the hosts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    netns: str
    link: str  # its veth end on the bridge (in the root namespace); its own end is eth0
    address: str


@dataclass(frozen=True)
class Network:
    bridge: str
    address: str  # the bridge's: where the database listens
    hosts: dict[str, Host]
    table: str  # the nftables table (netdev family) that cuts a host off

    def cut(self, name: str) -> None:
        """From now on every IP packet between host `name` and the rest vanishes on the wire: it
        is dropped where it comes in, on the bridge's side of the link and on the host's, so no
        sender sees an error (ARP still passes: neither side learns that the other is gone)."""
        host = self.hosts[name]
        sh("nft", "-f", "-", stdin=self._drop_rule(host.link))
        sh("ip", "netns", "exec", host.netns, "nft", "-f", "-", stdin=self._drop_rule("eth0"))

    def restore(self, name: str) -> None:
        host = self.hosts[name]
        sh("nft", "delete", "table", "netdev", self.table)
        sh("ip", "netns", "exec", host.netns, "nft", "delete", "table", "netdev", self.table)

    def _drop_rule(self, device: str) -> str:
        return (f"table netdev {self.table} {{\n  chain cut {{\n"
                f"    type filter hook ingress device \"{device}\" priority -500\n"
                "    meta protocol ip drop\n  }\n}\n")


def free_subnet(tag: str) -> ipaddress.IPv4Network:
    """A /24 of 10.200.0.0/13 that no address or route here mentions, starting from the tag's."""
    used = sh("ip", "-o", "-4", "addr") + sh("ip", "-4", "route")
    subnets = list(ipaddress.IPv4Network("10.200.0.0/13").subnets(new_prefix=24))
    for step in range(len(subnets)):
        subnet = subnets[(int(tag, 16) + step) % len(subnets)]
        if str(subnet.network_address).rsplit(".", 1)[0] + "." not in used:
            return subnet
    pytest.skip("no free /24 in 10.200.0.0/13 for the test network")


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge with hosts `a` and `b`, each a network namespace on a veth pair."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs iproute2's `ip` and nftables' `nft`")
    tag = secrets.token_hex(3)
    addresses = [str(a) for a in free_subnet(tag).hosts()]
    net = Network(bridge=f"fp{tag}br", address=addresses[0],
                  hosts={name: Host(f"fms-partition-{tag}-{name}", f"fp{tag}{name}", addresses[index])
                         for index, name in enumerate("ab", 1)},
                  table=f"fms_partition_{tag}")
    undo: list[list[str]] = []  # run last to first
    try:
        try:
            sh("ip", "link", "add", net.bridge, "type", "bridge")
            undo.append(["ip", "link", "del", net.bridge])
            sh("ip", "addr", "add", f"{net.address}/24", "dev", net.bridge)
            sh("ip", "link", "set", net.bridge, "up")
            for host in net.hosts.values():
                sh("ip", "netns", "add", host.netns)
                undo.append(["ip", "netns", "del", host.netns])
                sh("ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns",
                   host.netns)
                undo.append(["ip", "link", "del", host.link])  # takes its peer along
                sh("ip", "link", "set", host.link, "master", net.bridge, "up")
                sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
                sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot make network namespaces here: `{' '.join(error.cmd)}`: "
                        f"{error.stderr.strip()}")
        try:
            # A first cut, at once undone: a kernel without the netdev ingress hook skips here.
            undo.append(["nft", "delete", "table", "netdev", net.table])  # should a cut outlive the test
            net.cut("a")
            net.restore("a")
        except subprocess.CalledProcessError as error:
            if not re.search(r"not supported|No such file|Could not process|not permitted", error.stderr):
                raise  # the rule, not the kernel
            pytest.skip(f"cannot cut a host off with nftables here: `{' '.join(error.cmd)}`: "
                        f"{error.stderr.strip()}")
        yield net
    finally:
        for command in reversed(undo):
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(command, capture_output=True, timeout=30)


@pytest.fixture
def database(network: Network) -> Iterator[str]:
    """A throwaway PostgreSQL cluster listening on the bridge's address only: the URL of a database
    in it."""
    if reason := postgres_cluster.missing():
        pytest.skip(reason)
    with postgres_cluster.postgres_cluster("partition", address=network.address,
                                           allow=f"{network.address}/24") as (url, _):
        yield url


@pytest.fixture
def spawn_on(worker_env: dict[str, str], network: Network,
             database: str) -> Iterator[Callable[..., WorkerProcess]]:
    """spawn_on(host, *args): a worker on host `a` or `b`, killed at the end if still running
    (before the database and the network go)."""
    started: list[WorkerProcess] = []

    def spawn(host: str, *args: str) -> WorkerProcess:
        # `ip netns exec` keeps the environment and execs the worker.
        netns = network.hosts[host].netns
        worker = WorkerProcess(list(args), worker_env, prefix=("ip", "netns", "exec", netns))
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.kill()


# -- the test -----------------------------------------------------------------------------------


def retry_of(study: optuna.Study, number: int) -> FrozenTrial | None:
    """The trial that took over trial `number`'s parameters once that is FAILED, once it runs."""
    trials = study.get_trials(deepcopy=False)
    if trials[number].state != TrialState.FAIL:
        return None
    return next((t for t in trials if (t.system_attrs.get("retry_history") or [None])[-1] == number
                 and t.state != TrialState.WAITING), None)


def test_a_host_cut_off_mid_trial(network: Network, database: str, spawn_on: Callable[..., WorkerProcess],
                                  tmp_path: Path) -> None:
    """A is cut off while it trains. B's heartbeat thread finds A's trial stale after the grace
    period, fails it and queues its parameters, and B runs them. A's storage calls meet the dead
    connection and fail within seconds (studies/storage.py: a TCP user timeout and keepalives; no
    hang on TCP's retransmissions), so the worker waits and retries with a log line. A is let
    back; it finds its trial ended by another worker, drops its late result with a warning, and
    carries on with the next trial. Then both get SIGTERM (finish the trial, exit 0). Nothing lost,
    nothing counted twice."""
    spec = spec_file(tmp_path, **budget(200), **{"train_subset = 6000": "train_subset = 2000"})  # ~1 s trials
    args = ["--spec", str(spec), "--storage", database, *ONE_CORE, *FAST_HEARTBEAT, "--db-patience", "60",
            "--verbose"]
    a, b = spawn_on("a", *args), spawn_on("b", *args)
    b.wait_for(" started", timeout=STARTUP)  # B is in its trial loop: its heartbeat thread checks
    storage = optuna.storages.RDBStorage(database)  # the test's reads: one pool, opened after B's schema
    study = optuna.load_study(study_name="smoke", storage=storage)
    for _ in range(5):  # A's next trial, its training just begun (a line read late: the one after)
        number = int(re.search(r"trial (\d+) started", a.wait_for(" started", timeout=STARTUP))[1])
        network.cut("a")
        cut_at, cut_at_wall = time.monotonic(), datetime.datetime.now()
        if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
            break
        network.restore("a")
    else:
        raise AssertionError(f"no trial of A's caught running:\n{a.output()}")
    try:
        # Cut off until B runs the retry and A has met the dead connection: a storage call of A's
        # returned an error (a heartbeat, or a call of the trial loop, which then waits and retries).
        deadline = time.monotonic() + 90
        while (retry := retry_of(study, number)) is None or not NOTICED.search(a.output()):
            assert time.monotonic() < deadline, (f"within 90 s of the cut: trial {number} re-run as "
                                                 f"{retry and retry.number}; A noticed:\n{a.output()}")
            time.sleep(0.2)
        noticed_after = time.monotonic() - cut_at
    finally:
        network.restore("a")
    cut_for = time.monotonic() - cut_at
    a.wait_for(f"trial {number} was ended as FAIL by another worker while it ran here", timeout=120)
    later = int(re.search(r"trial (\d+) started", a.wait_for(" started", timeout=120))[1])
    a.wait_for(f"trial {later} ", timeout=120)  # told: A carried on
    for worker in (a, b):
        worker.process.send_signal(signal.SIGTERM)
    for worker in (a, b):
        result = worker.finish(timeout=120)
        assert result.returncode == 0, worker.output()
        assert "stopped: SIGTERM received" in result.stdout and result.stderr == "", worker.output()
        assert "Traceback" not in worker.output()
    # A's calls in its trial loop that met the cut (if any did) waited and retried: --db-patience counts.
    waits = [line for line in a.output().splitlines() if "database unreachable" in line]
    assert all(re.search(r"retrying in [\d.]+ s \(attempt \d+/\d+, giving up after --db-patience 60 s\)",
                         line) for line in waits), waits

    accounting = account(study)
    trials = study.get_trials(deepcopy=False)
    cut_trial, retry = trials[number], trials[retry.number]
    assert (accounting.failed, accounting.retries, accounting.lost) == (1, {number: retry.number}, [])
    assert accounting.finished == len(trials) - 1
    assert cut_trial.user_attrs["worker"]["pid"] == a.pid and "fail_reason" not in cut_trial.user_attrs
    assert cut_trial.value is None  # failed by the stale check; A's late result never written
    assert retry.user_attrs["worker"]["pid"] == b.pid and retry.params == cut_trial.params
    assert trials[later].user_attrs["worker"]["pid"] == a.pid and trials[later].state in FINISHED
    after = sum(t.number > number and t.user_attrs["worker"]["pid"] == a.pid for t in trials)
    storage.engine.dispose()
    failed_after = (cut_trial.datetime_complete - cut_at_wall).total_seconds()
    print(f"\npartition: faults injected: host A cut off {cut_for:.1f} s mid-trial (every IP packet dropped; "
          f"grace 3 s, heartbeat 1 s), 2 workers on 2 hosts; {accounting.line()}; trial {number} FAILED by B "
          f"{failed_after:.1f} s after the cut, re-run by B as trial {retry.number}; A's first storage error "
          f"{noticed_after:.1f} s after the cut ({len(waits)} waits logged), its late result dropped, then "
          f"{after} more trial(s) of A's; SIGTERM: both exit 0")
