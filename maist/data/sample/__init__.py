"""The embedded sample data set: generated hiragana stored as ETL8G records (not ETL data).

Importing this package is cheap; ``maist.data.sample.generate`` (PIL, torch) rebuilds the zip.
"""

from pathlib import Path

SAMPLE_ZIP: Path = Path(__file__).with_name("etl8g-sample.zip")
