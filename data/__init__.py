"""shardtune.data: the bundled sample and the generator that wrote it."""
