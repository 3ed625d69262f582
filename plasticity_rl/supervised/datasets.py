"""Image classification datasets read from their standard files: MNIST, Fashion-MNIST, CIFAR.

Formats (the files as published, nothing converted):

* MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017): four IDX files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each raw or gzipped (``.gz``). An IDX file is a big-endian header
  ``0x00 0x00 <type code> <ndim>`` followed by ``ndim`` uint32 sizes and the row-major data;
  images have magic 2051 (uint8, 3 dims), labels 2049 (uint8, 1 dim).
* CIFAR-10 / CIFAR-100 (Krizhevsky 2009): the "python version" pickles,
  ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
  ``cifar-100-python/{train, test, meta}`` (labels under ``fine_labels``), or the official
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` archives, whose members are read in
  memory (nothing is extracted to disk). Each batch is a dict with ``data``, a uint8 array of
  shape ``(N, 3072)`` holding the red, green and blue 32x32 planes of each image row-major, so
  ``data.reshape(N, 3, 32, 32)`` is NCHW. Pickles are loaded by :class:`RestrictedUnpickler`,
  which only builds numpy arrays.

Where files are looked for: directly in ``data_dir`` (the layout of Debian's
``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``) and in ``data_dir/<name>/``;
``data_dir=None`` means :func:`default_data_dir`. Missing files are downloaded (if allowed) into
``data_dir/<name>/`` from the standard sources, checked against the published MD5 sums that
torchvision lists; files the user provides are never checksummed (Debian's are recompressed) but
their headers and sizes are validated. Nothing is written anywhere except by a download.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plasticity_rl.registry import ConfigError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

DATA_DIR_ENV = "PLASTICITY_RL_DATA"
"""Environment variable naming the data directory used when ``data_dir`` is None."""

DOWNLOAD_TIMEOUT_SECONDS = 60.0
"""Socket timeout of one download attempt, in seconds."""


class DatasetNotFound(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable; the message says where to put it."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is not in the expected format, or a download's MD5 is wrong."""


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"cifar100"``.
        train_x: uint8 images, shape ``(N, C, H, W)`` (C = 1 for MNIST-like, 3 for CIFAR).
        train_y: int64 labels in ``[0, num_classes)``, shape ``(N,)``.
        test_x: uint8 images, shape ``(M, C, H, W)``.
        test_y: int64 labels, shape ``(M,)``.
        num_classes: number of classes.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


@dataclass(frozen=True)
class CifarLayout:
    """File names of one CIFAR "python version" release."""

    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    meta_file: str
    meta_key: str


@dataclass(frozen=True)
class DatasetSource:
    """What a dataset looks like on disk and where it is published.

    Attributes:
        image_shape: ``(C, H, W)`` of one image.
        num_classes: number of classes.
        mirrors: base URLs (ending in ``/``) tried in order for a missing file.
        md5: published MD5 of each downloadable file, by file name.
        content_md5: MD5 of each IDX file's uncompressed content (what the data is, whatever
            its gzip wrapper), used to recognise the dataset on disk.
        cifar: the CIFAR layout, or None for the four IDX files.
        hint: extra advice appended to "not found" messages.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    mirrors: tuple[str, ...]
    md5: dict[str, str]
    content_md5: dict[str, str] | None = None
    cifar: CifarLayout | None = None
    hint: str = ""


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split -> (images file, labels file) of the MNIST-like datasets, without ``.gz``."""

SOURCES: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        image_shape=(1, 28, 28),
        num_classes=10,
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        content_md5={  # of the original files, as published
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion_mnist": DatasetSource(
        image_shape=(1, 28, 28),
        num_classes=10,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        content_md5={  # of the files in Debian's dataset-fashion-mnist (recompressed originals)
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        hint=(
            " (Debian: apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)"
        ),
    ),
    "cifar10": DatasetSource(
        image_shape=(3, 32, 32),
        num_classes=10,
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        cifar=CifarLayout(
            folder="cifar-10-batches-py",
            archive="cifar-10-python.tar.gz",
            train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
            test_file="test_batch",
            label_key="labels",
            meta_file="batches.meta",
            meta_key="label_names",
        ),
    ),
    "cifar100": DatasetSource(
        image_shape=(3, 32, 32),
        num_classes=100,
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        md5={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        cifar=CifarLayout(
            folder="cifar-100-python",
            archive="cifar-100-python.tar.gz",
            train_files=("train",),
            test_file="test",
            label_key="fine_labels",
            meta_file="meta",
            meta_key="fine_label_names",
        ),
    ),
}
"""Every dataset :func:`load_dataset` knows, by name."""


def default_data_dir() -> Path:
    """``$PLASTICITY_RL_DATA`` if set, else ``~/.cache/plasticity_rl``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/.cache/plasticity_rl").expanduser()


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = True
) -> ImageDataset:
    """Read a dataset's standard files into memory, downloading missing ones if allowed.

    Args:
        name: one of :data:`SOURCES` (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``),
            or ``imagenet32_classes`` (Continual ImageNet's class files, read lazily:
            :class:`~plasticity_rl.supervised.continual_imagenet.ImagenetClassFiles`).
        data_dir: directory holding the files directly or in ``data_dir/<name>/``; None means
            :func:`default_data_dir`.
        download: fetch missing files into ``data_dir/<name>/`` (MD5-checked).

    Raises:
        ConfigError: unknown ``name``.
        DatasetNotFound: a file is missing and could not be downloaded.
        DatasetFormatError: a file is corrupt, or a download does not match its published MD5.
    """
    key = name.lower()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if key == "imagenet32_classes":  # read class by class, never downloaded
        from plasticity_rl.supervised.continual_imagenet import ImagenetClassFiles

        return ImagenetClassFiles(root)  # type: ignore[return-value]
    if key not in SOURCES:
        raise ConfigError("dataset", name, [*sorted(SOURCES), "imagenet32_classes"])
    finder = _Finder(key, SOURCES[key], (root, root / key), download)
    load = _load_cifar if SOURCES[key].cifar is not None else _load_idx
    return load(finder)


# ---------------------------------------------------------------------------------------------
# Locating and downloading files


@dataclass(frozen=True)
class _Finder:
    """Finds a dataset's files in ``dirs`` or downloads them into ``dirs[-1]``."""

    name: str
    source: DatasetSource
    dirs: tuple[Path, ...]
    download: bool

    def find(self, *file_names: str) -> Path | None:
        """The first existing ``dir / file_name``, trying every file name in each dir in turn."""
        for directory in self.dirs:
            for file_name in file_names:
                if (directory / file_name).is_file():
                    return directory / file_name
        return None

    def obtain(self, file_name: str, looked_for: str) -> Path:
        """Download ``file_name``, or raise :class:`DatasetNotFound` saying what to do."""
        where = " or ".join(str(d) for d in self.dirs)
        urls = [mirror + file_name for mirror in self.source.mirrors]
        advice = (
            f"download it from {urls[0]} into {self.dirs[0]}, or pass --data-dir (data_dir=) "
            f"pointing at a directory that has it{self.source.hint}"
        )
        if not self.download:
            raise DatasetNotFound(
                f"{self.name}: {looked_for} not found in {where} (downloading is off); {advice}"
            )
        try:
            return download_file(urls, self.dirs[-1] / file_name, self.source.md5[file_name])
        except DatasetNotFound as exc:
            raise DatasetNotFound(
                f"{self.name}: {looked_for} not found in {where}, and downloading failed "
                f"({exc}); {advice}"
            ) from exc


def download_file(
    urls: Sequence[str],
    destination: Path,
    md5: str,
    timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS,
) -> Path:
    """Fetch the first URL that works into ``destination`` and check its MD5.

    Bytes go to a temporary file beside ``destination`` that is renamed only once the MD5
    matches, so an interrupted or wrong download never leaves a file behind.

    Raises:
        DatasetNotFound: every URL failed with a network or file-system error.
        DatasetFormatError: some URL delivered bytes whose MD5 differs from ``md5``.
    """
    failures: list[str] = []
    mismatch: DatasetFormatError | None = None
    for url in urls:
        try:
            _fetch(url, destination, md5, timeout_seconds)
            return destination
        except DatasetFormatError as exc:
            mismatch = exc
            failures.append(str(exc))
        except (OSError, HTTPException) as exc:  # URLError, HTTPError, timeouts, disk errors
            failures.append(f"{url}: {exc}")
    message = "; ".join(failures)
    if mismatch is not None:
        raise DatasetFormatError(message) from mismatch
    raise DatasetNotFound(message)


def _fetch(url: str, destination: Path, md5: str, timeout_seconds: float) -> None:
    """Stream ``url`` into a temporary file, verify its MD5, rename it to ``destination``."""
    request = urllib.request.Request(url, headers={"User-Agent": "plasticity-rl"})
    with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
        temp = Path(temp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(handle, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != md5:
                raise DatasetFormatError(
                    f"{url}: MD5 {digest.hexdigest()} differs from the published {md5}; "
                    "the download was deleted"
                )
            os.replace(temp, destination)
        finally:
            temp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code (third magic byte) -> big-endian element type."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped, detected from its first bytes) into a numpy array.

    Raises:
        DatasetFormatError: bad gzip stream, bad magic number, or a size that disagrees with
            the header (truncated file or trailing bytes).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetFormatError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected 00 00, a type "
            f"code in {sorted(_IDX_DTYPES)} and the number of dims)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize  # exact, however absurd the sizes
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "trailing bytes"
        raise DatasetFormatError(
            f"{path}: {problem}: {len(raw)} bytes, but the header's shape {shape} of {dtype} "
            f"needs {expected}"
        )
    data = np.frombuffer(raw, dtype, math.prod(shape), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))  # a writable native copy


def write_idx(path: str | Path, array: np.ndarray | Tensor) -> None:
    """Write ``array`` as an IDX file, gzipped if ``path`` ends in ``.gz`` (inverse of read_idx).

    Raises:
        ValueError: the dtype has no IDX type code (allowed: uint8, int8, int16, int32, float32,
            float64).
    """
    array = np.asarray(array)
    target = array.dtype.newbyteorder(">")
    codes = [code for code, dtype in _IDX_DTYPES.items() if dtype == target]
    if not codes:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, codes[0], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, target).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _load_idx(finder: _Finder) -> ImageDataset:
    """Read the four IDX files of an MNIST-like dataset."""
    source = finder.source
    arrays: dict[str, tuple[Tensor, Tensor]] = {}
    for split, (images_file, labels_file) in IDX_FILES.items():
        images = read_idx(_idx_path(finder, images_file))
        labels = read_idx(_idx_path(finder, labels_file))
        where = f"{finder.name} {split}"
        if images.dtype != np.uint8 or images.shape[1:] != source.image_shape[1:]:
            raise DatasetFormatError(
                f"{where}: {images_file} must have IDX magic 2051 (uint8 images of shape "
                f"(N, {source.image_shape[1]}, {source.image_shape[2]})); "
                f"got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise DatasetFormatError(
                f"{where}: {labels_file} must have IDX magic 2049 (uint8 labels of shape "
                f"({len(images)},)); got {labels.dtype} {labels.shape}"
            )
        for file_name, array in ((images_file, images), (labels_file, labels)):
            _check_identity(finder, file_name, array)
        arrays[split] = (
            torch.from_numpy(images).unsqueeze(1),
            _labels(labels, source.num_classes, f"{where} {labels_file}"),
        )
    return _dataset(finder, arrays)


def _check_identity(finder: _Finder, file_name: str, array: np.ndarray) -> None:
    """Recognise an IDX file by the MD5 of its uncompressed content: refuse another known
    dataset's file (Fashion-MNIST given to an ``mnist`` preset), warn on unknown content.

    Raises:
        DatasetFormatError: the file is a known file of another dataset.
    """
    content = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    digest = hashlib.md5(content + array.tobytes(), usedforsecurity=False).hexdigest()
    known = finder.source.content_md5 or {}
    if known.get(file_name) == digest:
        return
    for other, source in SOURCES.items():
        if (source.content_md5 or {}).get(file_name) == digest:
            raise DatasetFormatError(
                f"{finder.name}: {file_name} in {', '.join(map(str, finder.dirs))} is "
                f"{other}'s (MD5 {digest}), not {finder.name}'s: give the {finder.name} folder "
                f"to --data-dir, or use a {other} preset"
            )
    if known and file_name.startswith("train-images"):  # one line per dataset read
        print(f"warning: {finder.name}: {file_name} is not the published {finder.name} (MD5 of "
              f"its content {digest}); training on it as given", file=sys.stderr)  # fmt: skip


def _idx_path(finder: _Finder, stem: str) -> Path:
    """Path of an IDX file, raw or gzipped, downloading the ``.gz`` if missing."""
    found = finder.find(stem, f"{stem}.gz")
    return found if found is not None else finder.obtain(f"{stem}.gz", f"{stem}(.gz)")


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles

_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy < 2 (official)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}
"""The only globals a CIFAR pickle may reference: what rebuilding a numpy array needs."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays.

    Loading a pickle can call any importable function (``os.system``...); this one refuses
    every global outside :data:`_PICKLE_GLOBALS`.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; raise ``pickle.UnpicklingError`` for anything else."""
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR pickle only needs numpy "
                "array reconstruction"
            ) from None


def read_cifar_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle a CIFAR file with :class:`RestrictedUnpickler` (``encoding="bytes"``).

    Raises:
        DatasetFormatError: the bytes are not a pickle, or reference a forbidden global (the
            ``pickle.UnpicklingError`` is the cause).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure inside a foreign pickle means a bad file
        raise DatasetFormatError(f"{source}: cannot read CIFAR pickle: {exc}") from exc


def cifar_batch_bytes(
    images: np.ndarray | Tensor, labels: np.ndarray | Tensor | Sequence[int], label_key: str
) -> bytes:
    """A CIFAR batch pickle: ``{b"data": uint8 (N, 3072), label_key: list of int}``, protocol 2.

    Raises:
        ValueError: images are not uint8 of shape (N, 3, 32, 32) or (N, 3072), or the numbers
            of images and labels differ.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] not in ((3, 32, 32), (3072,)):
        raise ValueError(
            f"CIFAR images must be uint8 (N, 3, 32, 32) or (N, 3072); got {images.dtype} "
            f"{images.shape}"
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(f"CIFAR labels must have shape ({len(images)},); got {labels.shape}")
    batch = {
        b"data": np.ascontiguousarray(images.reshape(len(images), 3072)),
        label_key.encode(): labels.tolist(),
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_batch(
    path: str | Path,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | Sequence[int],
    label_key: str,
) -> None:
    """Write one CIFAR batch file (see :func:`cifar_batch_bytes`); inverse of the reader."""
    Path(path).write_bytes(cifar_batch_bytes(images, labels, label_key))


def _load_cifar(finder: _Finder) -> ImageDataset:
    """Read a CIFAR release from its folder of pickles or from its ``.tar.gz`` archive."""
    layout = finder.source.cifar
    assert layout is not None
    members = _cifar_members(finder, layout)
    splits = {"train": layout.train_files, "test": (layout.test_file,)}
    arrays: dict[str, tuple[Tensor, Tensor]] = {}
    for split, files in splits.items():
        images, labels = [], []
        for file_name in files:
            batch_images, batch_labels = _cifar_batch(members[file_name], file_name, layout)
            images.append(batch_images)
            labels.append(batch_labels)
        arrays[split] = (
            torch.from_numpy(np.concatenate(images)),
            _labels(np.concatenate(labels), finder.source.num_classes, f"{finder.name} {split}"),
        )
    return _dataset(finder, arrays)


def _cifar_members(finder: _Finder, layout: CifarLayout) -> dict[str, bytes]:
    """The bytes of every batch file, by file name, from a complete folder or the archive."""
    needed = (*layout.train_files, layout.test_file)
    for directory in finder.dirs:
        for folder in (directory / layout.folder, directory):
            if all((folder / name).is_file() for name in needed):
                return {name: (folder / name).read_bytes() for name in needed}
    archive = finder.find(layout.archive)
    if archive is None:
        looked_for = f"{layout.folder}/{{{', '.join(needed)}}} or {layout.archive}"
        archive = finder.obtain(layout.archive, looked_for)
    wanted = {f"{layout.folder}/{name}": name for name in needed}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:  # one sequential pass, nothing extracted
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                extracted = tar.extractfile(member) if name is not None else None
                if extracted is not None:
                    members[name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{archive}: not a readable .tar.gz archive ({exc})") from exc
    missing = [name for name in needed if name not in members]
    if missing:
        members_missing = ", ".join(f"{layout.folder}/{name}" for name in missing)
        raise DatasetFormatError(f"{archive}: lacks {members_missing}")
    return members


def _cifar_batch(data: bytes, file_name: str, layout: CifarLayout) -> tuple[np.ndarray, Any]:
    """Images ``(N, 3, 32, 32)`` and raw labels of one batch pickle, validated."""
    batch = read_cifar_pickle(data, file_name)
    key = layout.label_key.encode()
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise DatasetFormatError(
            f"{file_name}: expected a dict with keys b'data' and {key!r}; got "
            f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}"
        )
    images, labels = batch[b"data"], np.asarray(batch[key])
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DatasetFormatError(f"{file_name}: b'data' must be a uint8 (N, 3072) array")
    if images.shape[1] != 3072 or labels.shape != images.shape[:1]:
        raise DatasetFormatError(
            f"{file_name}: b'data' has shape {images.shape} and {key!r} shape {labels.shape}; "
            f"expected (N, 3072) and (N,)"
        )
    return images.reshape(-1, 3, 32, 32), labels


# ---------------------------------------------------------------------------------------------
# Shared


def _labels(labels: np.ndarray, num_classes: int, where: str) -> Tensor:
    """Labels as an int64 tensor, checked to lie in ``[0, num_classes)``."""
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{where}: labels range over [{labels.min()}, {labels.max()}]; "
            f"expected [0, {num_classes - 1}]"
        )
    return torch.from_numpy(labels)


def _dataset(finder: _Finder, arrays: dict[str, tuple[Tensor, Tensor]]) -> ImageDataset:
    """The dataset, refused unless its training split holds examples of every class (the
    streams split and permute them by class) and its test split is not empty."""
    for split, (_, labels) in arrays.items():
        present = torch.unique(labels).tolist()
        if len(present) < (finder.source.num_classes if split == "train" else 1):
            shown = present if len(present) <= 10 else f"{len(present)} classes"
            raise DatasetFormatError(
                f"{finder.name} {split}: {len(labels)} examples of classes {shown}; the streams "
                f"need {'examples of all ' if split == 'train' else 'test examples of '}"
                f"{finder.source.num_classes} classes"
            )
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    return ImageDataset(finder.name, train_x, train_y, test_x, test_y, finder.source.num_classes)


def write_dataset(dataset: ImageDataset, directory: str | Path, compress: bool = True) -> Path:
    """Write ``dataset`` in its official format into ``directory`` (inverse of load_dataset).

    MNIST-like: the four IDX files, gzipped if ``compress``. CIFAR: the folder of pickles
    (``cifar-10-batches-py/`` with the training set split over ``data_batch_1..5``, or
    ``cifar-100-python/``), or with ``compress`` the official ``.tar.gz`` archive holding it.
    The meta file names classes ``class_0, class_1, ...``. Useful for small test sets.

    Returns:
        ``directory``, ready for ``load_dataset(dataset.name, directory)``.

    Raises:
        ConfigError: unknown dataset name.
        ValueError: image shapes differ from the dataset's (C, H, W).
    """
    if dataset.name not in SOURCES:
        raise ConfigError("dataset", dataset.name, sorted(SOURCES))
    source = SOURCES[dataset.name]
    for x in (dataset.train_x, dataset.test_x):
        if tuple(x.shape[1:]) != source.image_shape:
            raise ValueError(
                f"{dataset.name}: images must be (N, *{source.image_shape}); got {tuple(x.shape)}"
            )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": (dataset.train_x, dataset.train_y), "test": (dataset.test_x, dataset.test_y)}
    layout = source.cifar
    if layout is None:
        suffix = ".gz" if compress else ""
        for split, (images_file, labels_file) in IDX_FILES.items():
            images, labels = splits[split]
            write_idx(directory / f"{images_file}{suffix}", images[:, 0].numpy())
            write_idx(directory / f"{labels_file}{suffix}", labels.numpy().astype(np.uint8))
        return directory
    train_parts = zip(
        np.array_split(dataset.train_x.numpy(), len(layout.train_files)),
        np.array_split(dataset.train_y.numpy(), len(layout.train_files)),
        strict=True,
    )
    members = {
        name: cifar_batch_bytes(images, labels, layout.label_key)
        for name, (images, labels) in zip(layout.train_files, train_parts, strict=True)
    }
    members[layout.test_file] = cifar_batch_bytes(*splits["test"], layout.label_key)
    class_names = [f"class_{i}".encode() for i in range(source.num_classes)]
    members[layout.meta_file] = pickle.dumps({layout.meta_key.encode(): class_names}, protocol=2)
    if compress:
        with tarfile.open(directory / layout.archive, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(f"{layout.folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (directory / layout.folder).mkdir(exist_ok=True)
        for name, data in members.items():
            (directory / layout.folder / name).write_bytes(data)
    return directory
