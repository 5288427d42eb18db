"""MAIST's data, outside Lightning too::

    from maist.data import EtlDataset, MaistDataModule, class_set, read_etl

- :class:`EtlDataset`: a torchvision dataset of one class set's characters under an ETL root
  (``split="train"|"val"|"test"``, ``transform``, ``classes``, ``class_to_idx``);
- :class:`MaistDataModule`: the same split in batches, for Lightning;
- :func:`class_set`: the class sets (``hiragana71`` …), their characters and JIS codes;
- :func:`read_etl`: every record of a file, folder or zip, decoded as stored.

Names are imported on first use, so ``maist.data.etl`` alone does not load Lightning.
"""

from importlib import import_module

_WHERE = {
    "EtlDataset": "maist.data.dataset",
    "MaistDataModule": "maist.data.datamodule",
    "Preprocess": "maist.data.preprocess",
    "class_set": "maist.data.kana",
    "read_etl": "maist.data.etl",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'maist.data' has no attribute {name!r}")
