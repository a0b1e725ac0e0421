"""Data: named data sets held in memory as tensors, binarization, input corruption."""

from pyrovae.data.corruption import Corruption, parse_noise
from pyrovae.data.datasets import (
    BINARIZE_MODES,
    MIN_HELD_OUT,
    Dataset,
    binarize,
    check_binarize_mode,
    data_search_path,
    default_cache_dir,
    load_dataset,
)

__all__ = ["BINARIZE_MODES", "MIN_HELD_OUT", "Corruption", "Dataset", "binarize", "check_binarize_mode",
           "data_search_path", "default_cache_dir", "load_dataset", "parse_noise"]
