"""A local dataset folder read in one scan, split and labelled as ``datasets.load_dataset(folder)`` does.

``datasets.load_dataset(folder)`` finds a folder's data files by globbing the whole tree once per
default split pattern (train / validation / test keywords in folder and file names, ``data/<split>-*``
shards, ``**``), then downloads, analyses and converts every file in Python: minutes for a few
hundred thousand images (datasets issues 5317 and 6359). Here the tree is walked once
(``os.scandir``) and the same rules are applied to the list in memory:

* splits: datasets' own ``_get_data_files_patterns`` decides, asked through a resolver that matches
  each pattern against the list with fsspec's glob translation (as ``fs.glob`` matches it); hidden
  and ``__special__`` folders and the card files are left out, as datasets leaves them out;
* the builder: the most common file type, with datasets' ranking (parquet first on a draw);
* a plain image folder (images only: no ``metadata.csv``, no archives) becomes the table the
  imagefolder builder would write, paths and labels (the parent folder's name, ``ClassLabel`` in
  alphabetical order, only with more than one class and every image at the same depth), built in
  memory: that table is all the builder's Arrow conversion holds, and one scan rebuilds it faster
  than datasets can check its cache (which takes the modification time of every file);
* any other folder (parquet shards, metadata files) goes to its builder with the explicit files and
  their modification times, which are the key of datasets' Arrow cache: a second load of an
  unchanged folder reuses the converted files.

A folder whose dataset card declares ``configs`` or ``dataset_info`` (README.md YAML,
``.huggingface.yaml``), a folder of archives, or a ``config_name``, is left to datasets' own
inference: the card may name its files and features itself.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

IMAGE_FOLDER_MODULE = "imagefolder"


@dataclass(frozen=True)
class FolderScan:
    """The files below ``root`` that datasets' patterns can match, in sorted order.

    ``files`` are posix paths relative to ``root`` (absolute, links resolved, as datasets resolves
    it); ``folders`` the runs of consecutive files of one folder: ``(folder relative to root, start,
    stop)``; ``tail_counts`` how many files end with each tail, a tail being a file's suffixes from
    its first dot (``.png``, ``.tar.gz``, ``""``): datasets decides by those, never by the rest.
    """

    root: str
    files: list[str]
    folders: list[tuple[str, int, int]]
    tail_counts: Counter

    @cached_property
    def listing(self) -> str:
        """The relative paths, one a line."""
        return "\n".join(self.files)

    @cached_property
    def has_line_breaks(self) -> bool:
        """Whether a file name holds a line break (datasets' file filter drops those files)."""
        return self.listing.count("\n") != len(self.files) - 1

    @cached_property
    def tails(self) -> list[str]:
        """Each file's tail; only asked for when the counts do not settle a question."""
        return [(parts := name[name.rfind("/") + 1 :].partition("."))[1] + parts[2] for name in self.files]

    def tail_counts_of(self, indices: Sequence[int]) -> Counter:
        # A range is every file (the "**" pattern).
        return self.tail_counts if isinstance(indices, range) else Counter(self.tails[index] for index in indices)

    def absolute(self, indices: Sequence[int]) -> list[str]:
        return [f"{self.root}/{self.files[index]}" for index in indices]

    def ending_with(self, suffix: str) -> list[str]:
        """The absolute paths of the files whose name ends with ``suffix`` (``.parquet``)."""
        if not any(tail.endswith(suffix) for tail in self.tail_counts):
            return []
        return self.absolute([index for index, name in enumerate(self.files) if name.endswith(suffix)])

    def folder_of_files(self) -> np.ndarray:
        """For each file, the index of its run in ``folders``."""
        return np.repeat(np.arange(len(self.folders)), [stop - start for _, start, stop in self.folders])


def scan_folder(path: str | Path) -> FolderScan:
    """Every file below ``path`` that datasets' default patterns can match, in one walk.

    Left out as datasets' resolver leaves them out: hidden files and folders (``.name``), folders
    named ``__name``, and the card files (README.md, dataset_infos.json, ...). Links are followed,
    as fsspec's glob follows them (a link to a folder already entered is not entered again). The
    files come out in the order of their sorted paths, as ``fs.glob`` returns them: each folder's
    entries sorted by name, a sub-folder taking its place as ``name/``.
    """
    from datasets.data_files import FILES_TO_IGNORE

    root = Path(path).expanduser().resolve().as_posix()
    ignored = set(FILES_TO_IGNORE)
    files: list[str] = []
    folders: list[tuple[str, int, int]] = []
    tail_counts: Counter = Counter()
    entered = {root}

    def add_files(prefix: str, names: list[str]) -> None:
        if names:
            start = len(files)
            files.extend([prefix + name for name in names] if prefix else names)
            folders.append((prefix, start, len(files)))
            tail_counts.update(_count_tails(names))

    def visit(prefix: str, folder: str) -> None:
        # Comprehensions rather than a loop: this runs once per file, and sets the pace of the whole load.
        with os.scandir(folder) as iterator:
            entries = list(iterator)
        names = sorted([entry.name for entry in entries if entry.is_file()])
        # Sorted, the hidden names (".x") stand together, and a card file is found by bisection.
        hidden = slice(bisect.bisect_left(names, "."), bisect.bisect_left(names, "/"))
        if hidden.start < hidden.stop:
            del names[hidden]
        for name in ignored:
            at = bisect.bisect_left(names, name)
            if at < len(names) and names[at] == name:
                del names[at]
        subfolders = []
        for entry in entries if len(names) < len(entries) else ():
            if entry.name[0] == "." or entry.name.startswith("__") or entry.is_file() or not entry.is_dir():
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if target in entered:
                    continue
                entered.add(target)
            subfolders.append((entry.name + "/", entry.path))
        subfolders.sort()
        done = 0
        for key, subfolder in subfolders:
            before = bisect.bisect_left(names, key, lo=done)
            add_files(prefix, names[done:before])
            visit(prefix + key, subfolder)
            done = before
        add_files(prefix, names[done:])

    visit("", root)
    return FolderScan(root, files, folders, tail_counts)


def _count_tails(names: list[str]) -> Counter:
    """How many of ``names`` end with each tail (the suffixes from the first dot).

    A folder of one-dot names (``img_0001.png``) is counted in the joined names, without a look at each
    name in Python: when the dots number the names and every line ends with a one-dot tail seen at
    either end of the sorted list, each name has exactly that one dot. Other folders: name by name.
    """
    text = "\n".join(names) + "\n"
    seen = {(parts := name.partition("."))[1] + parts[2] for name in (names[0], names[-1])}
    if all(tail.count(".") == 1 for tail in seen) and text.count(".") == text.count("\n") == len(names):
        counts = Counter({tail: text.count(tail + "\n") for tail in seen})
        if sum(counts.values()) == len(names):
            return counts
    return Counter((parts := name.partition("."))[1] + parts[2] for name in names)


class _InMemoryResolver:
    """datasets' ``resolve_pattern`` over a scan: the files a glob pattern matches, in sorted order.

    The pattern is translated by fsspec as ``fs.glob`` translates it. Every plain piece of a pattern
    (``train``, ``data``) occurs in a path it matches, so a pattern with a piece found nowhere in the
    folder costs one substring search, not a regular expression per file.
    """

    def __init__(self, scan: FolderScan):
        self.files = scan.files
        self.text = scan.listing
        self.pieces_found: dict[str, bool] = {}

    def indices(self, pattern: str) -> Sequence[int]:
        from fsspec.utils import glob_translate

        if pattern == "**":
            return range(len(self.files))
        pieces = _plain_pieces(pattern)
        for piece in pieces:
            if piece not in self.pieces_found:
                # "training" is absent wherever "train" is: one search of the listing less.
                absent = any(not found and known in piece for known, found in self.pieces_found.items())
                self.pieces_found[piece] = not absent and piece in self.text
            if not self.pieces_found[piece]:
                return []
        longest = max(pieces, key=len, default="")
        regex = re.compile(glob_translate(pattern))
        return [index for index, name in enumerate(self.files) if longest in name and regex.match(name)]

    def __call__(self, pattern: str) -> list[str]:
        matched = self.indices(pattern)
        if not matched:
            raise FileNotFoundError(f"Unable to find '{pattern}'")
        return self.files if isinstance(matched, range) else [self.files[index] for index in matched]


def _plain_pieces(pattern: str) -> list[str]:
    """The runs of plain characters of a glob pattern, each within one path component."""
    without_classes = re.sub(r"\[[^\]]*\]", "/", pattern)
    return [piece for piece in re.split(r"[*?/]", without_classes) if piece]


def _suffixes(tail: str) -> list[str]:
    """``.tar.gz`` -> ``[".tar", ".gz"]``, as datasets reads a file's extensions."""
    return ["." + suffix for suffix in tail.split(".")[1:]]


def _keep_by_suffixes(scan: FolderScan, indices: Sequence[int], keep) -> Sequence[int]:
    """The files of ``indices`` whose suffixes ``keep`` accepts, decided once per distinct tail."""
    rejected = {tail for tail in scan.tail_counts_of(indices) if not keep(_suffixes(tail))}
    if not rejected:
        return indices
    return [index for index in indices if scan.tails[index] not in rejected]


def split_files(scan: FolderScan) -> dict[str, Sequence[int]]:
    """Split name -> indices of ``scan.files``, as ``datasets.load_dataset(folder)`` splits the folder.

    datasets' default patterns, tried in its order; a split's files are the matches of each of its
    patterns with a data-file extension, pattern after pattern (as ``DataFilesList`` resolves them).
    Raises datasets' ``EmptyDatasetError`` when no pattern matches, as datasets does.
    """
    from datasets.data_files import EmptyDatasetError, _get_data_files_patterns
    from datasets.packaged_modules import _ALL_ALLOWED_EXTENSIONS

    resolver = _InMemoryResolver(scan)
    try:
        patterns = _get_data_files_patterns(resolver)
    except FileNotFoundError:
        raise EmptyDatasetError(f"The directory at {scan.root} doesn't contain any data files") from None
    allowed = set(_ALL_ALLOWED_EXTENSIONS)
    splits = {}
    for split, split_patterns in patterns.items():
        matches = [resolver.indices(pattern) for pattern in split_patterns]
        found = matches[0] if len(matches) == 1 else [index for matched in matches for index in matched]
        splits[str(split)] = _keep_by_suffixes(scan, found, lambda suffixes: any(suffix in allowed for suffix in suffixes))
    return splits


def infer_module(scan: FolderScan, splits: dict[str, Sequence[int]], path: str) -> tuple[str | None, dict]:
    """datasets' ``infer_module_for_data_files``, from counts of file suffixes.

    The builder of the most common extension, metadata files aside, parquet first on a draw (then
    lance, vortex, arrow, jsonl, json, csv, then the extension's name); the same for every split.
    None when an archive (``.zip``) decides: datasets then looks inside it (left to datasets).
    """
    from datasets.exceptions import DataFilesNotFoundError
    from datasets.packaged_modules import _ALL_METADATA_FILENAMES, _EXTENSION_TO_MODULE

    metadata_names = set(_ALL_METADATA_FILENAMES)
    metadata_tails = {name: (parts := name.partition("."))[1] + parts[2] for name in metadata_names}
    preferred = (".parquet", ".lance", ".vortex", ".arrow", ".jsonl", ".json", ".csv")

    def rank(item):
        (extension, is_metadata), count = item
        return (not is_metadata, count, *(extension == name for name in preferred), extension)

    modules = {}
    for split, indices in splits.items():
        tails = scan.tail_counts_of(indices)
        counts = Counter()
        for tail, count in tails.items():
            metadata = 0
            named = {name for name in metadata_names if metadata_tails[name] == tail and name in scan.listing}
            if named:
                metadata = sum(1 for index in indices if scan.files[index].rsplit("/", 1)[-1] in named)
            for suffix in _suffixes(tail):
                counts[suffix.lower(), False] += count - metadata
                counts[suffix.lower(), True] += metadata
        modules[split] = (None, {})
        for (extension, _), count in sorted(counts.items(), key=rank, reverse=True):
            if not count:
                continue
            if extension == ".zip":
                return None, {}
            if extension in _EXTENSION_TO_MODULE:
                modules[split] = _EXTENSION_TO_MODULE[extension]
                break
    module, builder_kwargs = next(iter(modules.values()))
    if any((module, builder_kwargs) != split_module for split_module in modules.values()):
        raise ValueError(f"Couldn't infer the same data file format for all splits. Got {modules}")
    if not module:
        raise DataFilesNotFoundError(f"No (supported) data files found in {path}")
    return module, builder_kwargs


def _keep_for_module(scan: FolderScan, indices: Sequence[int], module: str) -> Sequence[int]:
    """datasets' ``DataFilesList.filter`` for the module: its extensions and its metadata files.

    A file with one of the extensions among its suffixes passes that filter's expression for sure,
    unless its name holds a line break (the expression's ``.*`` stops there); the others (a few, if
    any) are put to the expression itself, on the absolute path as datasets does.
    """
    from datasets.data_files import DataFilesList
    from datasets.packaged_modules import _MODULE_TO_EXTENSIONS, _MODULE_TO_METADATA_EXTENSIONS, _MODULE_TO_METADATA_FILE_NAMES

    extensions = _MODULE_TO_EXTENSIONS[module] + _MODULE_TO_METADATA_EXTENSIONS[module]
    known = set(extensions)
    certain = _keep_by_suffixes(scan, indices, lambda suffixes: any(suffix in known for suffix in suffixes))
    if scan.has_line_breaks:
        certain = [index for index in certain if "\n" not in scan.files[index]]
    if len(certain) == len(indices):
        return indices
    certain = set(certain)
    others = [index for index in indices if index not in certain]
    by_path = dict(zip(scan.absolute(others), others))
    passed = DataFilesList(list(by_path), []).filter(extensions=extensions, file_names=_MODULE_TO_METADATA_FILE_NAMES[module])
    kept = certain | {by_path[file] for file in passed}
    return [index for index in indices if index in kept]


def declares_its_own_files(root: str | Path) -> bool:
    """Whether the folder's dataset card declares configs or features (README.md YAML, .huggingface.yaml)."""
    root = Path(root)
    if (root / ".huggingface.yaml").exists() or (root / "dataset_infos.json").exists():
        return True
    readme = root / "README.md"
    if not readme.is_file():
        return False
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(readme).data.to_dict()
    except Exception:  # noqa: BLE001 - a card datasets cannot read either: datasets reports it
        return True
    return bool(card.get("configs") or card.get("dataset_info"))


def load_local_folder(path: str | Path, config_name: str | None = None, scan: FolderScan | None = None):
    """What ``datasets.load_dataset(str(path), config_name)`` returns, reading the tree once.

    ``scan``: the folder's :func:`scan_folder`, when the caller has it already.
    """
    import datasets
    from datasets.data_files import DataFilesDict, DataFilesList

    if config_name is not None or declares_its_own_files(path):
        return datasets.load_dataset(str(path), config_name)
    scan = scan or scan_folder(path)
    splits = split_files(scan)
    module, builder_kwargs = infer_module(scan, splits, Path(path).as_posix())
    if module is None:
        return datasets.load_dataset(str(path))
    splits = {split: _keep_for_module(scan, indices, module) for split, indices in splits.items()}
    if module == IMAGE_FOLDER_MODULE and not builder_kwargs:
        image_folder = plain_image_folder(scan, splits)
        if image_folder is not None:
            return image_folder
    # The modification times are the key of datasets' cache: an unchanged folder reuses its Arrow files.
    data_files = DataFilesDict()
    for split, indices in splits.items():
        files = scan.absolute(indices)
        data_files[split] = DataFilesList(files, [(str(os.stat(file).st_mtime),) for file in files])
    return datasets.load_dataset(module, data_files=data_files, **builder_kwargs)


def plain_image_folder(scan: FolderScan, splits: dict[str, Sequence[int]]):
    """The imagefolder builder's ``DatasetDict`` for a folder of images only, built from the scan; else None.

    None (left to the builder) when a split is empty or holds anything but files with an image
    extension (metadata files, archives, ``name.png.gz``), or when the builder's label rule answers
    differently for different splits (it decides split by split, with the classes seen so far).
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    image_extensions = set(ImageFolder.EXTENSIONS)
    folder_of_files = scan.folder_of_files()
    # The class is the parent folder's name; a file at the top is in the folder named by the root.
    folder_classes = [os.path.basename(f"{scan.root}/{folder}".rstrip("/")) for folder, _, _ in scan.folders]
    classes: set[str] = set()
    depths: set[int] = set()
    labelled = []
    for indices in splits.values():
        images = _keep_by_suffixes(scan, indices, lambda suffixes: bool(suffixes) and suffixes[-1].lower() in image_extensions)
        if not indices or len(images) < len(indices):
            return None
        folders = range(len(scan.folders)) if isinstance(indices, range) else np.unique(folder_of_files[_as_array(indices)])
        classes.update(folder_classes[folder] for folder in folders)
        depths.update(scan.folders[folder][0].count("/") for folder in folders)
        labelled.append(len(classes) > 1 and len(depths) == 1)
    if len(set(labelled)) > 1:
        return None
    features = datasets.Features({"image": datasets.Image()})
    if labelled[0]:
        features["label"] = datasets.ClassLabel(names=sorted(classes))
    if not scan.has_line_breaks:
        # All paths through one string: Arrow splits it faster than it converts a list of Python strings.
        relative = pc.list_flatten(pc.split_pattern(pa.array([scan.listing]), "\n"))
        paths = pc.binary_join_element_wise(f"{scan.root}/", relative, "")
    else:  # a file name with a line break in it
        paths = pa.array(scan.absolute(range(len(scan.files))), pa.string())
    class_of_folder = np.array([features["label"].str2int(name) for name in folder_classes] if labelled[0] else [], dtype=np.int64)
    result = {}
    for split, indices in splits.items():
        split_paths = paths if isinstance(indices, range) else paths.take(pa.array(_as_array(indices)))
        columns = {"image": pa.StructArray.from_arrays([pa.nulls(len(indices), pa.binary()), split_paths], ["bytes", "path"])}
        if labelled[0]:
            columns["label"] = pa.array(class_of_folder[folder_of_files[_as_array(indices)]])
        result[split] = datasets.Dataset(
            pa.table(columns).cast(features.arrow_schema),
            info=datasets.DatasetInfo(features=features, builder_name=IMAGE_FOLDER_MODULE),
            split=datasets.NamedSplit(split),
            fingerprint=_fingerprint(scan, split, indices),
        )
    return datasets.DatasetDict(result)


def _fingerprint(scan: FolderScan, split: str, indices: Sequence[int]) -> str:
    """Named by the folder and the split's files: the same folder gives the same fingerprint."""
    digest = hashlib.sha256(f"{scan.root}\n{split}\n".encode())
    digest.update(scan.listing.encode())
    digest.update(_as_array(indices).tobytes())
    return digest.hexdigest()[:16]


def _as_array(indices: Sequence[int]) -> np.ndarray:
    # np.asarray(range(n)) walks the range in Python.
    if isinstance(indices, range):
        return np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    return np.asarray(indices, dtype=np.int64)
