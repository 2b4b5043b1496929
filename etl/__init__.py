"""shardtune.etl"""
