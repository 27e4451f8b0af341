"""MovieLens ratings in, an encoded and split `Dataset` out; formats are detected, never configured.

`load_movielens` reads a folder, zip, ratings file or named set (downloaded once into a cache);
`prepare_dataset` label-encodes and splits it the way the tutorial does.
"""

from mf.data.dataset import Dataset, Interactions, prepare_dataset
from mf.data.download import DATASETS, RemoteDataset, data_home, fetch
from mf.data.formats import Ratings, load_movielens
from mf.data.split import SPLIT_METHODS

__all__ = [
    "DATASETS",
    "SPLIT_METHODS",
    "Dataset",
    "Interactions",
    "Ratings",
    "RemoteDataset",
    "data_home",
    "fetch",
    "load_movielens",
    "prepare_dataset",
]
