#!/usr/bin/env bash
# The one command a lent GPU machine runs (the device tool's `run`), in the repository's root there:
#   bash benchmarks/device_lease.sh        (carry: .whl .gpu)
# That machine has torch but no Optuna and no internet, and ../shared does not travel, so the
# call carries .whl (Optuna, SQLAlchemy, psycopg, optuna-dashboard wheels; docs/timing.md, "The
# GPU path", says how they are fetched), .gpu/mnist (the four raw MNIST files, gzipped) and
# .gpu/reference (the seed recipe). In order, each bounded so that the lease ends inside one
# call: the GPU tests of the trainer and the graphed step, cuda_graphs against eager in one
# process, then the device suite.
# Everything is written to $OUT as it goes (the tool brings $OUT back).
set -u
OUT=${OUT:-/tmp/device-lease}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
began=$(date +%s)
stage() { echo "== [$(( $(date +%s) - began )) s] $*"; }

stage "carried wheels and data"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p ../shared/mnist/MNIST/raw ../shared/reference
cp .gpu/reference/seed_recipe.py ../shared/reference/
for packed in .gpu/mnist/*.gz; do
  gunzip -c "$packed" > "../shared/mnist/MNIST/raw/$(basename "$packed" .gz)"
done
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, optuna; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version(), 'optuna', optuna.__version__, torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$OUT/machine.txt"

stage "GPU tests: trainer and graphed step"
timeout 100 python3 -m pytest -q -o addopts="" -p no:cacheprovider \
  tests/objective/test_graphed.py tests/objective/test_timed_run.py 2>&1 | tee "$OUT/tests.log" | tail -25

stage "cuda_graphs against eager"
timeout 90 python3 benchmarks/bench_cuda_graphs.py --device cuda --seeds 10 2>&1 \
  | tee "$OUT/graphs.log" | tail -14

stage "device suite"
timeout "${SUITE_SECONDS:-380}" python3 benchmarks/device_suite.py --device cuda --out /tmp/suite \
  --search-minutes "${SEARCH_MINUTES:-3}" 2>&1 | tee "$OUT/suite.log" | tail -30
cp /tmp/suite/device_suite.json /tmp/suite/device_suite.md /tmp/suite/best.json /tmp/suite/suite.db "$OUT/" 2>/dev/null
stage "done"
