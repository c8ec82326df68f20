"""`python -m search.dashboard`: optuna-dashboard on a study storage, the journal's included.

    python -m search.dashboard [--storage URL] [--host 127.0.0.1] [--port 8080]

optuna-dashboard's own CLI (`optuna-dashboard URL`) reads SQLite, PostgreSQL and MySQL studies; a
`postgresql+journal://` storage (studies/journal.py) is a URL it does not know, so this command
opens the storage the way export does, read-only (never a new database, table or study), and
serves it through optuna-dashboard's `run_server`. Loopback only by default, as the dashboard's.
"""

from __future__ import annotations

import argparse
import sys

import optuna_dashboard

from objective.cli import OneLineParser
from objective.errors import UserError
from studies.storage import JOURNAL, mask, open_journal, open_storage, parse_url, resolve_url


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m search.dashboard", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", help="storage URL (default: $OPTUNA_STORAGE, else sqlite:///optuna.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = resolve_url(args.storage)
    try:
        if parse_url(url).drivername == JOURNAL:
            storage = open_journal(url, heartbeat=False, create=False)
        else:
            storage = open_storage(url, heartbeat=False)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"optuna-dashboard on {mask(url)}: http://{args.host}:{args.port}/", flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
