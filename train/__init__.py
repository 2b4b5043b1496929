"""shardtune.train"""
