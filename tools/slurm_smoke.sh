#!/usr/bin/env bash
# tools/slurm/worker.sbatch for real, on a throwaway Slurm cluster on this host: slurmctld and two
# slurmd, nodes n0 and n1 of one CPU each (two "hosts" on one machine, so that one can fail), munged,
# and a fresh database on the local PostgreSQL. First two one-task jobs with bad input (no storage;
# the worker's --n-trials 0): each FAILED 2:0. Then a 2-task job array of the worker on
# studies/smoke.toml (CPU, --threads 1, heartbeat 1 s, grace 3 s), and:
#
#   1. node loss: task 1's node dies mid-trial (SIGKILL to its slurmd, its slurmstepd and the worker,
#      as a power cut would). The study: that trial turns FAILED by task 0's stale check within the
#      grace period and task 0 runs its parameters again. Slurm: the node goes DOWN, the task is
#      requeued (--requeue); the node comes back, the task runs again and its new worker joins.
#   2. graceful scancel of the array mid-trial: each worker finishes its running trial (COMPLETE or
#      PRUNED, not FAILED) and exits 0; Slurm records CANCELLED, ExitCode 0:0.
#   3. the study's exact accounting: trial numbers 0..n-1 once each, nothing RUNNING or WAITING,
#      exactly one FAILED (the lost node's), every re-queued trial re-run (lost 0).
#
# Exit 0 when all of that held, 1 when something did not, 77 (last line "SKIP: why") when it cannot
# run here (not root, no Slurm packages and none installable, no PostgreSQL, no MNIST). The last line
# prints the figures. Everything it started (daemons, jobs, the database, the temp folder) is removed
# on exit, failure included. docs/cluster.md#slurm.
#
#   tools/slurm_smoke.sh     # PYTHON (default .venv/bin/python), MNIST_DATA (default ../shared/mnist),
#                            # SMOKE_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
#                            # SMOKE_KEEP=1 keeps the temp folder (logs, slurm.conf) for a look
#
# Why not `scancel --signal=KILL` for the hard kill: in Slurm 22.05 it is a plain cancel (SIGCONT,
# SIGTERM, SIGKILL after KillWait), so the worker finishes its trial; only `scancel --batch
# --signal=KILL` SIGKILLs the worker itself (the task ends FAILED 0:9, no requeue). A node's death is
# what --requeue is for, so this kills the node.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

python=${PYTHON:-.venv/bin/python}
mnist=${MNIST_DATA:-$(cd .. && pwd)/shared/mnist}
admin_url=${SMOKE_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
say() { printf '== %s %s\n' "$(date +%T.%2N)" "$*"; }
skip() { say "cannot run here: $*"; echo "SKIP: $*"; exit 77; }

# -- can it run here? ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (slurmd starts jobs as their user; munged and slurmd run as root here)"
[ -d "$mnist/MNIST/raw" ] || skip "no MNIST at $mnist (set MNIST_DATA to a folder holding MNIST/raw)"
"$python" -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=5).close()" "$admin_url" \
    2>/dev/null || skip "no PostgreSQL answers at $admin_url (set SMOKE_ADMIN_URL)"
daemons="slurmctld slurmd sbatch scancel scontrol squeue sinfo munged"
missing() { for d in $daemons; do command -v "$d" >/dev/null || { echo "$d"; return; }; done; }
if [ -n "$(missing)" ]; then
    # Installed only when missing: Debian 12's slurm-wlm is Slurm 22.05. Its postinst starts no daemon
    # where there is no systemd; where there is one, this script's daemons use ports of their own.
    command -v apt-get >/dev/null || skip "Slurm ($(missing)) is not installed and there is no apt-get"
    say "installing slurm-wlm and munge (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        >/tmp/slurm-smoke-apt.log 2>&1 || skip "apt-get install slurm-wlm munge failed (/tmp/slurm-smoke-apt.log)"
    [ -z "$(missing)" ] || skip "$(missing) still missing after installing slurm-wlm and munge"
fi

# -- the cluster's folder and configuration --------------------------------------------------------
# munged insists that every folder above its socket be searchable by all, and that its key be
# readable by its owner only: hence 755 for the folder and the socket's, 700 for the key's.
tmp=$(mktemp -d /tmp/slurm-smoke.XXXXXX)
chmod 755 "$tmp"
mkdir -p "$tmp"/{run,state,spool/n0,spool/n1,locks,tensors} "$tmp/munge"
chmod 700 "$tmp/munge"
head -c 1024 /dev/urandom >"$tmp/munge/munge.key"
chmod 600 "$tmp/munge/munge.key"
# Every process this run starts carries this tag in its environment: the daemons, and through them
# the slurmstepds, and through sbatch's --export=ALL the workers. The teardown finds them by it.
tag="slurm-smoke-$$-$RANDOM"
database="slurm_smoke_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
storage="postgresql+psycopg://${admin_url#*://}"  # the same user and host, the new database
storage="${storage%/*}/$database"
job='' ctld_pid='' munged_pid='' summary=''
declare -A slurmd_pid=()

teardown() {
    local rc=$? pids p
    trap - EXIT INT TERM
    set +e
    if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
        say "FAILED (exit $rc): the cluster's last words"
        [ -n "$job" ] && squeue -t all -o '%i %T %r %N' 2>/dev/null
        for f in "$tmp"/task-*.out; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done
        tail -n 20 "$tmp/slurmctld.log" 2>/dev/null
    fi
    [ -n "$job" ] && scancel "$job" 2>/dev/null
    for _ in $(seq 20); do  # the jobs end (KillWait 30 s at most); usually at once
        [ -z "$job" ] || [ -z "$(squeue -h -j "$job" -t running,completing 2>/dev/null)" ] && break
        sleep 0.5
    done
    for p in "${slurmd_pid[@]}" $ctld_pid $munged_pid; do kill "$p" 2>/dev/null; done
    sleep 1
    # What is left of this run (a slurmstepd or a worker orphaned by a killed daemon): SIGKILL, by pid.
    pids=$(grep -lsaz "^SMOKE_TAG=$tag\$" /proc/[0-9]*/environ | cut -d/ -f3)
    for p in $pids; do [ "$p" != $$ ] && kill -KILL "$p" 2>/dev/null; done
    "$python" - "$admin_url" "$database" <<'EOF' 2>/dev/null
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    admin.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
EOF
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
    say "torn down: jobs, slurmd n0 n1, slurmctld, munged, database $database"
    [ "$rc" = 0 ] && echo "$summary"
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { say "FAILED: $*"; exit 1; }

# Three free ports: the controller's and one for each slurmd (two slurmd on one host need their own).
read -r ctld_port n0_port n1_port <<<"$("$python" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')"
host=$(hostname -s)
export SLURM_CONF=$tmp/slurm.conf
cat >"$SLURM_CONF" <<EOF
# A throwaway cluster: this host is the controller and both nodes. No cgroups (proctrack/linuxproc
# follows the process tree, task/none pins nothing: the workers lease their own cores), no
# accounting database (slurmdbd): finished jobs stay in squeue/scontrol for MinJobAge seconds, and
# jobcomp/filetxt writes one line per ended job (also on a requeue).
ClusterName=smoke
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/run/munge.sock
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$tmp/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool/%n
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.%n.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.%n.log
# Slurm's defaults, stated: a cancelled task gets 30 s between SIGTERM and SIGKILL.
KillWait=30
# A silent node is DOWN after 10 s without an answer (default 300), and its jobs requeued.
SlurmdTimeout=10
# A DOWN node that registers again (its slurmd restarted) is usable again at once.
ReturnToService=2
MinJobAge=3600
NodeName=n0 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n0_port CPUs=1 State=UNKNOWN
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n1_port CPUs=1 State=UNKNOWN
PartitionName=smoke Nodes=n0,n1 Default=YES MaxTime=INFINITE State=UP
EOF

# The study's side, by SQL on Optuna's tables (fast enough to poll every 50 ms), and its final
# accounting through Optuna itself.
cat >"$tmp/study.py" <<'EOF'
import collections, datetime, sys, time
import psycopg

url, what, args = sys.argv[1], sys.argv[2], sys.argv[3:]
conn = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
BY_PID = """select t.number, t.state::text from trials t join trial_user_attributes a
            on a.trial_id = t.trial_id and a.key = 'worker' where (a.value_json::json->>'pid')::int = %s"""

def of(pid):  # {number: state} of the trials worker `pid` has run or runs
    try:
        return dict(conn.execute(BY_PID, (int(pid),)).fetchall())
    except psycopg.errors.UndefinedTable:  # no worker has created Optuna's tables yet
        return {}

def until(test, timeout, why):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if (found := test()) is not None:
            return found
        time.sleep(0.05)
    sys.exit(f"not within {timeout} s: {why}")

if what == "fresh":  # a trial of worker PID that starts from now on, once it has finished one
    pid, timeout = args
    until(lambda: any(s != "RUNNING" for s in of(pid).values()) or None, timeout, f"worker {pid} finished no trial")
    before = set(of(pid))
    print(until(lambda: next((n for n, s in of(pid).items() if s == "RUNNING" and n not in before), None),
                timeout, f"worker {pid} started no new trial"))
elif what == "running":  # the trials worker PID is running
    print(*sorted(n for n, s in of(args[0]).items() if s == "RUNNING"))
elif what == "states":  # the states of trials NUMBERS
    rows = dict(conn.execute("select number, state::text from trials where number = any(%s)",
                             ([int(n) for n in args],)).fetchall())
    print(*(rows[int(n)] for n in args))
elif what == "stale-failed":  # worker PID's trials FAILED by another worker's stale check (no fail_reason)
    print(*sorted(n for n, s in of(args[0]).items() if s == "FAIL" and not conn.execute(
        "select 1 from trial_user_attributes a join trials t on t.trial_id = a.trial_id "
        "where t.number = %s and a.key = 'fail_reason'", (n,)).fetchone()))
elif what == "rerun":  # once trial N is FAIL and re-run to the end: seconds from KILLED_AT to its FAIL,
    n, killed_at, timeout = int(args[0]), float(args[1]), args[2]  # the re-run's number, state, params, pid
    def rerun():
        return conn.execute("""
            select t.number, t.state::text, (a.value_json::json->>'pid')
            from trials t join trial_system_attributes r on r.trial_id = t.trial_id and r.key = 'retry_history'
            join trial_user_attributes a on a.trial_id = t.trial_id and a.key = 'worker'
            where (r.value_json::json ->> -1)::int = %s and t.state in ('COMPLETE', 'PRUNED')""", (n,)).fetchone()
    number, state, pid = until(rerun, timeout, f"trial {n} FAILED and re-run")
    failed_at, = conn.execute("select datetime_complete from trials where number = %s and state = 'FAIL'",
                              (n,)).fetchone()
    params = "select param_name, param_value from trial_params p join trials t on t.trial_id = p.trial_id " \
             "where t.number = %s order by 1"
    same = conn.execute(params, (n,)).fetchall() == conn.execute(params, (number,)).fetchall()
    print(f"{failed_at.timestamp() - killed_at:.1f}", number, state, "same" if same else "different", pid)
elif what == "account":  # tests/search/workers.py's account(), through Optuna: exact, or exit 1
    import optuna
    from optuna.trial import TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="smoke", storage=url).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    states = collections.Counter(t.state.name for t in trials)
    retries = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    by_number, lost = {t.number: t for t in trials}, []
    for number in retries:
        last = number
        while last in retries:
            last = retries[last]
        if by_number[last].state not in (TrialState.COMPLETE, TrialState.PRUNED):
            lost.append(number)
    print(len(trials), states["COMPLETE"], states["PRUNED"], states["FAIL"], states["RUNNING"],
          states["WAITING"], len(retries), len(lost), "ok" if numbers == list(range(len(trials))) else "numbers-broken")
EOF
study() { "$python" "$tmp/study.py" "$storage" "$@"; }
job_field() { scontrol show job "$1" | grep -o "\b$2=[^ ]*" | head -1 | cut -d= -f2; }
node_state() { sinfo -h -n "$1" -o %T; }
task_state() { squeue -h -t all -j "$1" -o %T; }
worker_pid() {  # the pid the task's worker has in its run `restart` (worker.sbatch logs it), once it does
    sed -n "s/.*(job [0-9]*, restart $2) on .*: worker pid \([0-9]*\)$/\1/p" "$tmp/task-${job}_$1.out" 2>/dev/null | tail -1
}
wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 5; i++)); do "$@" && return 0; sleep 0.2; done
    fail "not within $limit s: $what"
}

# -- bring it up -----------------------------------------------------------------------------------
start_slurmd() {
    SMOKE_TAG=$tag slurmd -D -N "$1" >>"$tmp/slurmd.$1.out" 2>&1 &
    slurmd_pid[$1]=$!
    disown  # its death, on purpose, is no news for the shell to print
}
say "slurm $(slurmctld -V | cut -d' ' -f2) on $host: munged, slurmctld :$ctld_port, slurmd n0 :$n0_port, n1 :$n1_port ($tmp)"
SMOKE_TAG=$tag munged -F -S "$tmp/run/munge.sock" --key-file="$tmp/munge/munge.key" --log-file="$tmp/munge/log" \
    --pid-file="$tmp/munge/pid" --seed-file="$tmp/munge/seed" >"$tmp/munge/out" 2>&1 &
munged_pid=$!
disown
wait_for 10 "munged's socket" test -S "$tmp/run/munge.sock"
SMOKE_TAG=$tag slurmctld -D -i >"$tmp/slurmctld.out" 2>&1 &
ctld_pid=$!
disown
start_slurmd n0
start_slurmd n1
both_idle() { [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | sort | paste -sd ' ')" = "n0 idle n1 idle" ]; }
wait_for 60 "nodes n0 and n1 idle (sinfo)" both_idle
say "cluster up in $((SECONDS - started)) s: $(sinfo -h -o '%P %a %D %T %N')"

"$python" - "$admin_url" "$database" <<'EOF'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    admin.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
# The workers' environment, passed on by sbatch (--export=ALL, its default): the storage, MNIST, a
# tensor cache built once here (not by both workers at once) and a lock folder of this run's own.
export OPTUNA_STORAGE=$storage MNIST_DATA=$mnist FAST_MNIST_CACHE=$tmp/tensors FAST_MNIST_LOCK_DIR=$tmp/locks
"$python" -c "from objective.data import load_uint8, resolve_root; load_uint8(resolve_root(None))"

# -- bad input: exit 2 as Slurm records it ---------------------------------------------------------
# Two one-task jobs first (sbatch --wait returns when they end): worker.sbatch without a storage,
# and the worker itself given a bad option (--n-trials 0). Both end FAILED 2:0, nothing written.
bad_input() {  # bad_input COMMAND...: run sbatch --wait, print the job's "JobState ExitCode"
    local id
    id=$(SMOKE_TAG=$tag "$@" 2>/dev/null | tail -1) || true  # sbatch --wait exits with the job's code
    echo "$(job_field "$id" JobState) $(job_field "$id" ExitCode)"
}
one_task=(sbatch --parsable --wait --array=0 --gres=none --cpus-per-task=1)  # one task: not the script's 0-3
no_storage=$(bad_input env -u OPTUNA_STORAGE "${one_task[@]}" --output="$tmp/no-storage.out" \
    tools/slurm/worker.sbatch --spec studies/smoke.toml)
bad_option=$(bad_input "${one_task[@]}" --output="$tmp/bad-option.out" \
    tools/slurm/worker.sbatch --spec studies/smoke.toml --device cpu --threads 1 --n-trials 0)
say "bad input: no storage -> $no_storage ($(head -c 60 "$tmp/no-storage.out")...);" \
    "--n-trials 0 -> $bad_option ($(grep -m1 '^error' "$tmp/bad-option.out" | head -c 60)...)"
[ "$no_storage" = "FAILED 2:0" ] && [ "$bad_option" = "FAILED 2:0" ] || fail "bad input not FAILED 2:0"
grep -q '^error: ' "$tmp/bad-option.out" || fail "the worker's bad input: no error line"

# -- submit ----------------------------------------------------------------------------------------
# --gres=none and --cpus-per-task=1 override worker.sbatch's gpu:1 and 8 CPUs; --output in the temp
# folder instead of slurm-%A_%a.out in the repository.
job=$(SMOKE_TAG=$tag sbatch --parsable --array=0-1 --gres=none --cpus-per-task=1 --time=15 \
    --output="$tmp/task-%A_%a.out" tools/slurm/worker.sbatch \
    --spec studies/smoke.toml --device cpu --threads 1 --data-dir "$mnist" \
    --heartbeat-interval 1 --grace-period 3 --timeout 600)
say "submitted job array $job: 2 tasks, database $database"
both_running() { [ "$(task_state "${job}_0")" = RUNNING ] && [ "$(task_state "${job}_1")" = RUNNING ]; }
wait_for 60 "both tasks RUNNING" both_running
pid0='' pid1=''
have_pids() { pid0=$(worker_pid 0 0) && pid1=$(worker_pid 1 0) && [ -n "$pid0" ] && [ -n "$pid1" ]; }
wait_for 30 "both workers' pids in their logs" have_pids
node1=$(squeue -h -j "${job}_1" -o %N)
say "task 0: worker pid $pid0 on $(squeue -h -j "${job}_0" -o %N); task 1: worker pid $pid1 on $node1"

# -- 1. node loss mid-trial ------------------------------------------------------------------------
# A trial of task 1 caught as it starts, half a second in (the workers' trials take seconds on one
# core): its node dies with it. The slurmstepd is the worker's parent (worker.sbatch execs it).
trial=$(study fresh "$pid1" 240) || fail "task 1 ran no trial"
sleep 0.5
stepd=$(ps -o ppid= -p "$pid1" | tr -d ' ')
[ "$(cat "/proc/$stepd/comm" 2>/dev/null)" = slurmstepd ] || fail "the worker's parent $stepd is not a slurmstepd"
kill -KILL "${slurmd_pid[$node1]}" "$stepd" "$pid1"
killed_at=$(date +%s.%N) killed_s=$SECONDS
say "node $node1 lost: SIGKILL to its slurmd, slurmstepd $stepd and worker $pid1, trial $trial RUNNING"
out=$(study rerun "$trial" "$killed_at" 120) || fail "trial $trial not FAILED and re-run"
read -r failed_after rerun rerun_state rerun_params rerun_pid <<<"$out"
say "trial $trial FAILED ${failed_after} s after the loss (grace 3 s, heartbeat 1 s); re-run as trial $rerun" \
    "by worker $rerun_pid: $rerun_state, $rerun_params parameters"
[ "$(study stale-failed "$pid1")" = "$trial" ] || fail "task 1's stale-failed trials: $(study stale-failed "$pid1")"
[ "$rerun_pid" = "$pid0" ] && [ "$rerun_params" = same ] || fail "the re-run is not task 0's, same parameters"
requeued() { [ "$(node_state "$node1")" = "down*" ] && [ "$(task_state "${job}_1")" = PENDING ]; }
wait_for 90 "node $node1 DOWN and task 1 requeued" requeued
down_s=$((SECONDS - killed_s))
# The first run's end, as jobcomp logged it when the task was requeued.
first_run=$(awk "/ArrayJobId=$job ArrayTaskId=1 /"' {for (i = 1; i <= NF; i++) if ($i ~ /^(JobState|ExitCode)=/) {
    sub(/^[A-Za-z]*=/, "", $i); printf "%s ", $i}}' "$tmp/jobcomp.log" 2>/dev/null || true)
first_run=${first_run% }
[ "$first_run" = "NODE_FAIL 0:0" ] || fail "jobcomp logged the first run of task 1 as '$first_run', not NODE_FAIL 0:0"
say "slurm: node $node1 $(node_state "$node1") and task 1 $(task_state "${job}_1") (requeued, Restarts" \
    "$(job_field "${job}_1" Restarts)) $down_s s after the loss; jobcomp: ${first_run:-nothing}"

# The node comes back (ReturnToService=2). Slurm holds a requeued job for 2 minutes (BeginTime),
# which an admin may lift (StartTime=now), but not at once: here a task restarted within a second of
# its node's return ran while Slurm showed the node IDLE, and a later scancel reached no process
# ("deallocate_nodes: ... allocated no nodes to be killed on"; the worker ran on, unknown to Slurm).
# 15 s after the return it was started and cancelled like any task.
start_slurmd "$node1"
wait_for 30 "node $node1 back" bash -c "[ \"\$(sinfo -h -n $node1 -o %T)\" = idle ]"
sleep 15
pending_reason=$(squeue -h -j "${job}_1" -o %r)
scontrol update JobId="${job}_1" StartTime=now
wait_for 60 "task 1 RUNNING again" bash -c "[ \"\$(squeue -h -t all -j ${job}_1 -o %T)\" = RUNNING ]"
wait_for 10 "node $node1 ALLOCATED to the restarted task" bash -c "[ \"\$(sinfo -h -n $node1 -o %T)\" = allocated ]"
pid1b=''
have_pid1b() { pid1b=$(worker_pid 1 1) && [ -n "$pid1b" ]; }
wait_for 30 "task 1's second worker pid" have_pid1b
say "node $node1 back; task 1 (pending: $pending_reason, lifted) runs again, restart 1: worker pid $pid1b"

# -- 2. graceful scancel mid-trial -----------------------------------------------------------------
# Once task 1's new worker is in its trial loop, and as task 0's next trial starts: scancel the array.
study fresh "$pid1b" 240 >/dev/null || fail "task 1's second worker ran no trial"
mid0=$(study fresh "$pid0" 60) || fail "task 0 started no trial"
sleep 0.5
run0=$(study running "$pid0") run1=$(study running "$pid1b")
[ -n "$run0" ] || fail "task 0's trial $mid0 ended before the scancel"
read -r -a cancelled <<<"$run0 $run1"
scancel "$job"
cancelled_s=$SECONDS
say "scancel $job (both tasks) with trials RUNNING: ${cancelled[*]}"
done_both() { [ -z "$(squeue -h -j "$job" -t pending,running,completing)" ]; }
wait_for 60 "both tasks ended" done_both
ended_after=$((SECONDS - cancelled_s))
out=$(study states "${cancelled[@]}") || fail "no states for trials ${cancelled[*]}"
read -r -a mid_states <<<"$out"
say "their trials: ${mid_states[*]}; tasks ended ${ended_after} s after the scancel"
for s in "${mid_states[@]}"; do [[ $s =~ ^(COMPLETE|PRUNED)$ ]] || fail "a trial RUNNING at the scancel is $s"; done
for i in 0 1; do
    grep -q "stopped: SIGTERM received" "$tmp/task-${job}_$i.out" || fail "task $i's worker did not stop on SIGTERM"
done
slurm0="$(job_field "${job}_0" JobState) $(job_field "${job}_0" ExitCode)"
slurm1="$(job_field "${job}_1" JobState) $(job_field "${job}_1" ExitCode)"
restarts1=$(job_field "${job}_1" Restarts)
say "slurm: task 0 $slurm0; task 1 $slurm1, Restarts=$restarts1"
squeue -t all -j "$job" -o '%.10i %.10T %.12r %.6N' | sed 's/^/   /'
jobcomp_fields() {  # one line per ended job (a requeued task: one per run), the fields that matter
    awk '{printf "   jobcomp:"; for (i = 1; i <= NF; i++) if ($i ~ /^(JobId|ArrayJobId|ArrayTaskId|JobState|NodeList|ExitCode)=/) printf " %s", $i; print ""}' "$tmp/jobcomp.log"
}
jobcomp_fields
# ExitCode 0:0: the batch script's exit status, which worker.sbatch's exec makes the worker's own.
[ "$slurm0" = "CANCELLED 0:0" ] && [ "$slurm1" = "CANCELLED 0:0" ] || fail "Slurm's records: $slurm0 / $slurm1"
[ "$restarts1" = 1 ] || fail "task 1 Restarts=$restarts1, not 1"
for p in "$pid0" "$pid1b"; do ! kill -0 "$p" 2>/dev/null || fail "worker $p still runs after its task ended"; done

# -- 3. the study's accounting ---------------------------------------------------------------------
out=$(study account) || fail "the study's accounting"
read -r total complete pruned failed running waiting requeued_n lost numbers <<<"$out"
say "study: $total trials: $complete COMPLETE, $pruned PRUNED, $failed FAILED, $running RUNNING," \
    "$waiting WAITING; $requeued_n re-queued, lost $lost; trial numbers: $numbers"
[ "$numbers" = ok ] || fail "trial numbers duplicated or missing"
[ "$running" = 0 ] && [ "$waiting" = 0 ] || fail "trials left unfinished"
[ "$failed" = 1 ] && [ "$requeued_n" = 1 ] && [ "$lost" = 0 ] || fail "FAILED $failed, re-queued $requeued_n, lost $lost"

# The teardown prints it, as the last line.
summary="SUMMARY slurm $(slurmctld -V | cut -d' ' -f2), 2-task array on nodes n0 n1, $((SECONDS - started)) s:"
summary+=" trials $total: COMPLETE $complete, PRUNED $pruned, FAILED $failed, RUNNING $running, lost $lost;"
summary+=" node loss: trial $trial FAILED after $failed_after s, re-run as trial $rerun $rerun_state (same params,"
summary+=" task 0), task 1 $first_run requeued (node DOWN after $down_s s) and restarted;"
summary+=" scancel: trials $(tr ' ' , <<<"${cancelled[*]}") $(tr ' ' , <<<"${mid_states[*]}"), tasks ended"
summary+=" in $ended_after s: task 0 $slurm0, task 1 $slurm1 (Restarts $restarts1);"
summary+=" bad input: no storage $no_storage, --n-trials 0 $bad_option"
