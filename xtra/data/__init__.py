"""The datasets: one import for the registry, the in-memory sets and the streamed collections.

Registry: ``fashion-mnist`` and ``mnist`` (IDX files), ``cifar10`` / ``cifar100`` (the "python version"
directories), ``digits`` (scikit-learn's bundled 8x8 digits), ``synthetic`` (procedural, seeded, for
tests), and two path-based collections: ``imagefolder:PATH`` (one folder per class; ImageNet's
train/ + val/ layout) and ``wds:PATTERN`` (WebDataset tar shards, e.g. from ``xtra data pack``).

Small sets become a :class:`Dataset` of three :class:`Split` s of float32 images ``(N, C, H, W)``
at the model's resolution and channel count (28 px sets are zero-padded to 32, others resized; gray is
repeated to RGB, RGB turned to luminance), normalized with per-channel statistics of the train split
(taken before any ``limit_train`` cap), and pretraining augments them in batches on the device.
Path-based collections are never held in memory for pretraining: ``stream.open_stream`` reads,
decodes and crops them in loader workers (``transforms``: RandomResizedCrop from the full-resolution
image, bicubic, flip; ImageNet mean/std). ``load_dataset`` of one gives lazy splits for probing
(``lazy.LazyImages``: the evaluation transform, shorter side to size/0.8533 and a centre crop,
decoded on demand in loader workers; nothing decoded is kept).

The val split is carved from the training set by a permutation seeded with ``DataConfig.split_seed``
alone (never the trial seed), so every trial of a study probes on the same images (``val_size``
images, else ``val_fraction`` of them); sets without an official test split (digits, flat image
folders, shards without val shards) hold out a fixed seeded 20% as test.

Files are looked for in ``DataConfig.root`` (the folder itself or ``root/<name>``) if set, else in
``$XTRA_DATA/<name>`` (default ``~/.cache/xtra/data/<name>``, where ``download`` puts them), then in
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``).

Only torch, numpy and the standard library are imported here; scikit-learn and Pillow are imported
inside the functions that need them.

The modules, each importing only those above it: ``sets`` (the registered sets as data), ``listing``
(reading a sample's bytes), ``collection`` (imagefolder:/wds: listings), ``registry`` (names ->
files), ``readers`` (IDX, CIFAR, digits, synthetic), ``transforms`` (per-image crops), ``splitting``,
``decode`` (loader workers), ``lazy`` (lazy probe splits), ``memory`` (``load_dataset``),
``augmentation``, ``downloads``, ``advice``, ``sampler``, ``stream`` (pretraining batches), ``pack``.
This package only re-exports the public names.
"""

from __future__ import annotations

from xtra.data.advice import MEASURED_WORKER_RATE, workers_advice  # noqa: F401 - tests read the rate here
from xtra.data.augmentation import augment, denormalize
from xtra.data.collection import BadCollection
from xtra.data.downloads import DownloadError, download, extract_archive  # noqa: F401 - extract_archive: tests/test_security.py
from xtra.data.memory import Dataset, Split, clear_cache, load_dataset
from xtra.data.registry import data_home, fingerprint, list_datasets, locate
from xtra.data.sets import DatasetNotFound

__all__ = [
    "BadCollection",
    "Dataset",
    "DatasetNotFound",
    "DownloadError",
    "Split",
    "augment",
    "clear_cache",
    "data_home",
    "denormalize",
    "download",
    "fingerprint",
    "list_datasets",
    "load_dataset",
    "locate",
    "workers_advice",
]
