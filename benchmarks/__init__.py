"""shardtune.benchmarks"""
