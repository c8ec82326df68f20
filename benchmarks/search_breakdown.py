"""How each kept search spent its budget: trials, seeds, why trials stopped, the yardstick's range,
and every trial that reached the crown guard. Reads studies that `bench_search_outcome.py --keep DIR`
left behind; runs nothing.

    python benchmarks/search_breakdown.py DIR/search-spec-0.db [DIR/search-spec-1.db ...]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective import attributes  # noqa: E402


def reason(stopped: str) -> str:
    """`clearly slower after 1 seed: ...` -> `clearly slower`: the rule, without its figures."""
    return re.split(r" after | on seed |:", stopped, maxsplit=1)[0] or "(none)"


def breakdown(path: str) -> None:
    storage = f"sqlite:///{Path(path).resolve()}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    attrs = [t.user_attrs for t in trials]
    seeds = sum(len(a.get(attributes.ACCURACIES, [])) + len(a.get(attributes.CLAIM_ACCURACIES, []))
                for a in attrs)
    reasons = collections.Counter(reason(a.get(attributes.STOPPED, "")) for a in attrs)
    states = collections.Counter(t.state.name for t in trials)
    yardsticks = [a[attributes.YARDSTICK] for a in attrs if attributes.YARDSTICK in a]
    print(f"{path}: {len(trials)} trials ({', '.join(f'{n} {k}' for k, n in states.items())}), "
          f"{seeds} seeds run (claim seeds included); yardstick {min(yardsticks):.3f}-"
          f"{max(yardsticks):.3f} s")
    print("  stopped: " + ", ".join(f"{k} {n}" for k, n in reasons.most_common()))
    for trial, a in zip(trials, attrs, strict=True):
        if len(a.get(attributes.ACCURACIES, [])) >= 10:
            print(f"  trial {trial.number}: {a[attributes.STOPPED][:70]}; selection mean "
                  f"{100 * a[attributes.ACCURACY]:.3f} %, {a[attributes.VS_BASELINE]:.3f}x its yardstick"
                  + (f"; claim {100 * a[attributes.CLAIM_TEST_ACCURACY]:.3f} % (all 10,000), "
                     f"{100 * a[attributes.CLAIM_ACCURACY]:.3f} % (held-out), "
                     f"{a[attributes.CLAIM_SECONDS]:.3f} s" if attributes.CLAIM_ACCURACY in a else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="SQLite files kept by bench_search_outcome.py --keep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for path in parser.parse_args().studies:
        breakdown(path)


if __name__ == "__main__":
    main()
