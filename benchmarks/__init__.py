"""shardtune.benchmarks: `shardtune bench STAGE`, each stage against the seed notebook's way.

bench_<stage>.py holds a benchmark's options, parser and body; seed_<stage>.py the
seed's approach it is measured against; common.py what they share. A new benchmark is
one bench_<name>.py plus its name below.
"""

BENCHES = ("etl", "tokenize", "train", "generate", "memory", "fits", "overhead", "gpu", "planner")
