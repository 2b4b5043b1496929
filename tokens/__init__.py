"""shardtune.tokens: the pre-tokenization stage (cleaned Parquet -> memory-mapped token shards)."""
