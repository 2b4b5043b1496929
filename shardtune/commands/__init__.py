"""One module per `shardtune` command: `add_parser(sub)` declares it, `run(args, config)` runs it
with that command's Config (its TOML file, then the flags over it).

A command module imports only configs at the top (they are light); the stage it runs
is imported inside `run`, so building the parser never loads torch, numpy or Polars.
"""
