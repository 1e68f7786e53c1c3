"""Dataset names -> where their files are, without loading them: ``locate`` (registered sets in
``DataConfig.root``, ``$XTRA_DATA`` or ``/usr/share/datasets``; path-based collections listed), a
collection's ``fingerprint``, the flip default, and ``list_datasets`` for `xtra data list`.
"""

from __future__ import annotations

import os
from pathlib import Path

from xtra.config import DataConfig
from xtra.data.collection import is_path_collection, open_collection
from xtra.data.sets import IDX_FILES, SPECS, DatasetNotFound, DatasetSpec, cifar_files, dataset_spec, idx_file

_SYSTEM_ROOT = Path("/usr/share/datasets")
_DEFAULT_HOME = Path("~/.cache/xtra/data")


def data_home() -> Path:
    """Where downloads go and where sets are looked for first: ``$XTRA_DATA`` or ``~/.cache/xtra/data``."""
    env = os.environ.get("XTRA_DATA", "")
    return Path(env).expanduser() if env else _DEFAULT_HOME.expanduser()


def _candidate_dirs(name: str, root: str) -> list[Path]:
    """Directories that may hold the set, in lookup order."""
    if root:
        base = Path(root).expanduser()
        return [base, base / name]
    return [data_home() / name, _SYSTEM_ROOT / name]


def _locate_files(spec: DatasetSpec, root: str) -> tuple[Path, list[str]]:
    looked: list[str] = []
    for directory in _candidate_dirs(spec.name, root):
        if spec.kind == "idx":
            looked.append(str(directory))
            if all(idx_file(directory, stem) for stem in IDX_FILES.values()):
                return directory, looked
        else:  # cifar: the extracted folder itself, or a directory holding it
            for folder in (directory, directory / spec.subdir):
                looked.append(str(folder))
                if all((folder / f).is_file() for f in cifar_files(spec)):
                    return folder, looked
    raise DatasetNotFound(spec.name, looked)


def locate(cfg: DataConfig) -> str:
    """Where ``cfg``'s dataset is, without loading it. Raises ``DatasetNotFound`` / ``ValueError``."""
    name = cfg.name
    if is_path_collection(name):
        return open_collection(name).root  # lists it: every layout error is raised here, before any work
    spec = dataset_spec(name)
    if spec.kind == "digits":
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            raise DatasetNotFound(name, ["scikit-learn (not installed)"], "install it with `pip install scikit-learn`")
        return "scikit-learn bundled"
    if spec.kind == "synthetic":
        return "synthetic"
    folder, _ = _locate_files(spec, cfg.root)
    return str(folder.resolve())


def resolve_hflip(cfg: DataConfig) -> bool:
    if cfg.hflip != "auto":
        return cfg.hflip == "on"
    if is_path_collection(cfg.name):
        return True
    return dataset_spec(cfg.name).hflip


def fingerprint(cfg: DataConfig) -> str:
    """A content fingerprint of a path-based collection that does not depend on where it lives:
    imagefolder: a hash of the sorted split/class/file names and sizes (one directory listing);
    wds: the pack manifest's shard checksums, else the shard names and sizes. For a registered set
    (fashion-mnist, ...) its name. Bad layouts raise the same one-line errors as ``locate``."""
    if not is_path_collection(cfg.name):
        return cfg.name
    c = open_collection(cfg.name)
    return f"{c.kind}-{c.fingerprint}"


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_datasets() -> list[dict]:
    """One row per registered set: name, found, where (the folder, or "not in ..." every place looked),
    looked_in (those places, when not found), size (bytes on disk or None), n_train, n_test, description.
    ``imagefolder:PATH`` is listed as a pattern."""
    rows: list[dict] = []
    for spec in SPECS.values():
        row = dict(name=spec.name, found=False, where="", looked_in=[], size=None, n_train=spec.n_train,
                   n_test=spec.n_test, description=spec.description)
        try:
            where = locate(DataConfig(name=spec.name))
        except DatasetNotFound as e:
            row["where"], row["looked_in"] = "not in " + ", ".join(e.looked_in), e.looked_in
        else:
            row["found"], row["where"] = True, where
            if spec.kind in ("idx", "cifar"):
                folder = Path(where)
                files = ([idx_file(folder, s) for s in IDX_FILES.values()] if spec.kind == "idx"
                         else [folder / f for f in cifar_files(spec)])
                row["size"] = sum(_dir_size(f) for f in files if f is not None)
            elif spec.kind == "digits":
                row["size"] = _digits_size()
        rows.append(row)
    rows.append(dict(name="imagefolder:PATH", found=False, where="PATH/train/<class>/*.png|jpg (+ PATH/val/...)",
                     looked_in=[], size=None, n_train=None, n_test=None,
                     description="your own images, one folder per class (ImageNet's layout); streamed"))
    rows.append(dict(name="wds:PATTERN", found=False, where="a `xtra data pack` folder, or train-{000000..000099}.tar",
                     looked_in=[], size=None, n_train=None, n_test=None,
                     description="WebDataset tar shards (<key>.jpg + <key>.cls); streamed"))
    return rows


def _digits_size() -> int | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path.stat().st_size if path.is_file() else None
