"""MAIST: handwritten hiragana from the ETL Character Database, in Lightning + Hydra."""

__version__ = "0.1.0"
