"""How long a worker may be silent: the defaults of the worker's --heartbeat-interval,
--grace-period and --db-patience. A module that imports nothing, so the command line is built
before Optuna loads (search/worker.py)."""

HEARTBEAT_INTERVAL = 5  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20  # seconds without a heartbeat before a trial counts as dead
DEFAULT_PATIENCE = 120.0  # seconds one storage call may keep failing before the worker gives up
