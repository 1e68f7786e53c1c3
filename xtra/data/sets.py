"""The registered datasets as data: each one's kind, files, checksums (with where each comes from),
classes and how to get it; and ``DatasetNotFound``, whose one line names every place looked in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteFile:
    """One file of an official distribution and how to check it.

    ``sha256`` is set only where we know the value for that exact file; otherwise ``md5`` (as
    published by the dataset authors) and ``size`` are checked. See ``SPECS`` for provenance."""

    filename: str
    size: int
    md5: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # idx | cifar | digits | synthetic
    description: str
    num_classes: int
    n_train: int | None
    n_test: int | None
    hflip: bool  # what hflip="auto" resolves to
    base_url: str = ""
    remotes: tuple[RemoteFile, ...] = ()
    subdir: str = ""  # cifar: the folder inside the tarball


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# Checksums, and where each one comes from (we could not download the files to hash them here):
# - fashion-mnist: md5 from the Fashion-MNIST README (zalandoresearch/fashion-mnist); sha256 and
#   sizes from TensorFlow Datasets' url_checksums/fashion_mnist.txt, which records the same S3 URLs.
#   Debian's dataset-fashion-mnist re-gzips the files, so its .gz bytes hash differently (the
#   decoded images are the same); that is why installed files are never checked against these.
# - mnist: md5 as used by torchvision for the ossci-datasets mirror (the original LeCun files);
#   sizes from TensorFlow Datasets. No sha256 that we can vouch for that mirror's bytes.
# - cifar10 / cifar100: md5 of the python-version tarballs as published on the CIFAR page (and used
#   by torchvision); sizes as served by the Toronto site. No published sha256 for these tarballs.
SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "idx", "Zalando Fashion-MNIST: 28x28 gray clothing, 10 classes", 10, 60_000, 10_000,
        hflip=True, base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        remotes=(
            RemoteFile("train-images-idx3-ubyte.gz", 26_421_880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            RemoteFile("train-labels-idx1-ubyte.gz", 29_515, "25c81989df183df01b3e8a0aad5dffbe",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            RemoteFile("t10k-images-idx3-ubyte.gz", 4_422_102, "bef4ecab320f06d8554ea6380940ec79",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", 5_148, "bb300cfdad3c16e7a12a480ee83cd310",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        )),
    "mnist": DatasetSpec(
        "mnist", "idx", "LeCun MNIST: 28x28 gray handwritten digits, 10 classes", 10, 60_000, 10_000,
        hflip=False, base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        remotes=(
            RemoteFile("train-images-idx3-ubyte.gz", 9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", 28_881, "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", 1_648_877, "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", 4_542, "ec29112dd5afa0611ce80d1b7f02629c"),
        )),
    "cifar10": DatasetSpec(
        "cifar10", "cifar", "CIFAR-10: 32x32 color objects, 10 classes", 10, 50_000, 10_000,
        hflip=True, base_url="https://www.cs.toronto.edu/~kriz/",
        remotes=(RemoteFile("cifar-10-python.tar.gz", 170_498_071, "c58f30108f718f92721af3b95e74349a"),),
        subdir="cifar-10-batches-py"),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", "CIFAR-100: 32x32 color objects, 100 fine classes", 100, 50_000, 10_000,
        hflip=True, base_url="https://www.cs.toronto.edu/~kriz/",
        remotes=(RemoteFile("cifar-100-python.tar.gz", 169_001_437, "eb9058c3a382ffc7106e4002c42a8d85"),),
        subdir="cifar-100-python"),
    "digits": DatasetSpec(
        "digits", "digits", "scikit-learn's bundled 8x8 digits (16 gray levels), 10 classes; 20% held out as test",
        10, 1_438, 359, hflip=False),
    "synthetic": DatasetSpec(
        "synthetic", "synthetic", "procedural oriented gratings + noise, 10 classes (tests, smoke runs)",
        10, None, None, hflip=False),  # a flip changes a grating's orientation, i.e. its class
}


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return "get it with `xtra data get fashion-mnist` or `apt-get install dataset-fashion-mnist`"
    if name in SPECS and SPECS[name].remotes:
        return f"get it with `xtra data get {name}`"
    if name.startswith("imagefolder:"):
        return "expected PATH/train/<class>/*.png|jpg (and PATH/val/<class>/...) or PATH/<class>/*.png|jpg"
    if name.startswith("wds:"):
        return "expected tar shards (wds:/data/train-{000000..000099}.tar) or a folder from `xtra data pack`"
    return "see `xtra data list`"


def dataset_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(SPECS)}, imagefolder:PATH, wds:PATTERN)")
    return SPECS[name]


def idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def cifar_files(spec: DatasetSpec) -> tuple[str, ...]:
    if spec.name == "cifar10":
        return tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    return ("train", "test")


class DatasetNotFound(ValueError):
    """The dataset's files are not where we looked. The message is one line: which set, every path
    looked in, and how to get it."""

    def __init__(self, name: str, looked_in: list[str], hint: str = "") -> None:
        self.name = name
        self.looked_in = list(looked_in)
        self.hint = hint
        how = hint or _how_to_get(name)
        super().__init__(f"dataset {name!r} not found (looked in: {', '.join(self.looked_in)}); {how}")

    def __reduce__(self):  # noqa: ANN204 - survives pickling (Ray ships errors between processes)
        return (type(self), (self.name, self.looked_in, self.hint))
