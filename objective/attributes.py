"""The names of what a study and its trials record: Optuna user and system attributes, the one
contract between the worker that writes them and what reads them (export, report, the progress
lines, the dashboard, a user's own queries). Every module reads and writes them by these names.

Where each trial attribute is written (search/loop.py shows when in a trial's life):
- `WORKER`, `FAIL_REASON`: search/loop.py (`begin`, `end`, `release`);
- `CONFIG` and every measured one below: objective/optuna_objective.py (`Objective.plan`, `record`);
- `BASELINE`, `START_POINT`: studies/storage.py, as the study enqueues them;
- `CONSTRAINTS`: studies/optuna_internals.py (the one system attribute written here; Optuna's
  samplers and the dashboard read it by this name).
"""

from __future__ import annotations

# A trial's user attributes.
WORKER = "worker"  # {host, pid, device, shared_device, prefetch}: which worker ran it
FAIL_REASON = "fail_reason"  # why a FAILED trial failed
CONFIG = "config"  # the whole TrainConfig it trained: what export reproduces
BASELINE = "baseline"  # True on the enqueued seed recipe
START_POINT = "start_point"  # the index of the spec's [[start]] it came from
ACCURACY = "accuracy"  # mean accuracy over its seeds, on the selection half of the test images
SECONDS = "seconds"  # median timed seconds over its seeds
TRAIN_SECONDS = "train_seconds"  # ... of which training (the rest: evaluation)
ACCURACIES = "accuracies"  # one per seed
SECONDS_PER_SEED = "seconds_per_seed"  # one per seed
STOPPED = "stopped"  # why its seeds stopped (objective/seeds.py)
FINGERPRINT = "fingerprint"  # the device, software and threads it ran on
VS_BASELINE = "vs_baseline"  # SECONDS over YARDSTICK: the ratio its value is made of
YARDSTICK = "yardstick"  # the seed recipe's seconds on its device when it trained
CROWNED = "crowned"  # held the crown guard: the only kind export picks
CLAIM_ACCURACY = "claim_accuracy"  # the claim seeds' mean on the held-out half
CLAIM_TEST_ACCURACY = "claim_test_accuracy"  # ... on all 10,000 test images
CLAIM_SECONDS = "claim_seconds"  # the claim seeds' median seconds
CLAIM_ACCURACIES = "claim_accuracies"  # one per claim seed, held-out half
CLAIM = (CLAIM_ACCURACY, CLAIM_TEST_ACCURACY, CLAIM_SECONDS)

# Trial system attributes, Optuna's names.
CONSTRAINTS = "constraints"  # Optuna 5's constraints list (studies/optuna_internals.py)
RETRY_HISTORY = "retry_history"  # written by Optuna's retry callback (search/stale.py reads it)

# A study's user attributes, written once by the worker that creates it (studies/storage.py) but
# DEVICE_BEST, which every worker lowers (objective/optuna_objective.py).
STUDY_SPEC = "spec"  # the spec's TOML text
STUDY_BASE_CONFIG = "base_config"  # the seed recipe's TrainConfig
STUDY_ACCURACY_TARGET = "accuracy_target"  # the target (the dashboard shows it)
STUDY_OBJECTIVE = "objective"  # every ObjectiveSettings field: the study's one bar
STUDY_CREATED_AT = "created_at"  # unix seconds; written last, so its presence says "ready"
DEVICE_BEST = "best_ratio "  # + a fingerprint's JSON: that device's best crowned ratio
