"""Reading scans and making training examples: files -> subjects -> volumes -> tf.data.

``discover_subjects`` finds the files, ``load_subject`` reads, checks, normalises
and puts one subject on the network grid, ``preprocess`` does that once per
subject into an on-disk cache read through memory maps, ``make_dataset``
serves batches, and ``from_grid`` / ``save_nifti_like`` take a prediction back
to the scan.
"""

from tversky_keras.data.cache import CachedVolume, cached_subject, default_cache_dir, preprocess
from tversky_keras.data.errors import DataError, DataWarning
from tversky_keras.data.grid import (
    Geometry,
    GridMapping,
    crop_or_pad,
    from_grid,
    pad_to_multiple,
    save_nifti_like,
    to_grid,
)
from tversky_keras.data.io import MODALITIES, read_mask, read_nifti
from tversky_keras.data.normalize import zscore_in_brain
from tversky_keras.data.phantom import lesion_loads, synthesize_dataset, synthesize_subject
from tversky_keras.data.subjects import (
    Subject,
    Volume,
    discover_subjects,
    load_subject,
    subject_from_folder,
)

__all__ = [
    "MODALITIES",
    "CachedVolume",
    "DataError",
    "DataWarning",
    "Geometry",
    "GridMapping",
    "Subject",
    "Volume",
    "cached_subject",
    "crop_or_pad",
    "default_cache_dir",
    "discover_subjects",
    "from_grid",
    "lesion_loads",
    "load_subject",
    "make_dataset",
    "pad_to_multiple",
    "preprocess",
    "read_mask",
    "read_nifti",
    "save_nifti_like",
    "synthesize_dataset",
    "synthesize_subject",
    "subject_from_folder",
    "to_grid",
    "zscore_in_brain",
]


def __getattr__(name):
    # tf.data (and so TensorFlow) loads on first use of make_dataset: reading,
    # resampling and the phantom need no TensorFlow, nor do Keras' other backends.
    if name == "make_dataset":
        from tversky_keras.data.pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
