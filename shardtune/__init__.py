"""shardtune: streaming ETL, pre-tokenization and low-memory fine-tuning."""

__version__ = "0.1.0"
