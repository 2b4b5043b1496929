"""`shardtune bench STAGE`: each stage measured side by side with the seed's way.

The stages are the modules named in shardtune.benchmarks.BENCHES; each has its own
`add_parser(sub)` and `run(args, config)`, so a new benchmark is one file plus one name there.
"""

from __future__ import annotations

import importlib


def add_parser(sub) -> None:
    from shardtune.benchmarks import BENCHES

    p = sub.add_parser("bench", help="measure a stage against the seed notebook's approach",
                       description="Benchmarks that print throughput and memory side by side with the seed's "
                       "approach, in one run. Figures recorded so far are in benchmarks/RESULTS.md.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in BENCHES:
        importlib.import_module(f"shardtune.benchmarks.bench_{name}").add_parser(stages)
