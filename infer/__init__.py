"""shardtune.infer"""
