"""Reading MNIST / Fashion-MNIST IDX files and CIFAR pickles, downloads and checksums.

No test touches the network: ``urllib.request.urlopen`` is monkeypatched wherever a download
could start.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised import datasets
from plasticity_rl.supervised.datasets import (
    DATA_DIR_ENV,
    DatasetFormatError,
    DatasetNotFound,
    ImageDataset,
    RestrictedUnpickler,
    cifar_batch_bytes,
    default_data_dir,
    load_dataset,
    read_cifar_pickle,
    read_idx,
    write_cifar_batch,
    write_dataset,
    write_idx,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def assert_same(loaded: ImageDataset, expected: ImageDataset) -> None:
    assert loaded.name == expected.name and loaded.num_classes == expected.num_classes
    for field in ("train_x", "train_y", "test_x", "test_y"):
        got, want = getattr(loaded, field), getattr(expected, field)
        assert got.dtype == (torch.uint8 if field.endswith("x") else torch.int64), field
        assert torch.equal(got, want), field


def files_under(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")}


def serve(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], offline: tuple[str, ...] = ()
) -> list[str]:
    """Fake urlopen: URLs starting with an ``offline`` prefix fail, others get ``files[basename]``.

    Returns the list of requested URLs.
    """
    requested: list[str] = []

    def urlopen(request: urllib.request.Request, timeout: float | None = None) -> io.BytesIO:
        url = request.full_url
        requested.append(url)
        if url.startswith(offline):
            raise urllib.error.URLError("no network in tests")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, {}, offline=("",))


# ---------------------------------------------------------------------------------------------
# Round trips


SMALL_SIZES = {
    "mnist": (40, 20),
    "fashion_mnist": (30, 10),
    "cifar10": (23, 7),
    "cifar100": (120, 100),
}


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("in_subdir", [False, True], ids=["flat", "subdir"])
@pytest.mark.parametrize("name", sorted(SMALL_SIZES))
def test_write_then_load_round_trips_exactly(
    name: str,
    compress: bool,
    in_subdir: bool,
    tmp_path: Path,
    image_dataset_factory: Callable[..., ImageDataset],
) -> None:
    # IDX raw / .gz, CIFAR folder of pickles / official .tar.gz archive; files directly in
    # data_dir or in data_dir/<name>/. cifar10 with 23 train images: batches of 5, 5, 5, 4, 4.
    expected = image_dataset_factory(name, *SMALL_SIZES[name])
    write_dataset(expected, tmp_path / name if in_subdir else tmp_path, compress=compress)
    before = files_under(tmp_path)
    assert_same(load_dataset(name, tmp_path, download=False), expected)
    assert files_under(tmp_path) == before  # nothing extracted or written


def test_data_dir_may_be_the_cifar_folder_itself(
    cifar10_dir: Path, cifar10_data: ImageDataset
) -> None:
    loaded = load_dataset("cifar10", cifar10_dir / "cifar-10-batches-py", download=False)
    assert_same(loaded, cifar10_data)


def test_fixture_directories_hold_every_class_in_the_official_layout(
    mnist_dir: Path,
    mnist_data: ImageDataset,
    fashion_dir: Path,
    fashion_data: ImageDataset,
    cifar10_dir: Path,
    cifar10_data: ImageDataset,
    cifar100_dir: Path,
    cifar100_data: ImageDataset,
) -> None:
    layouts = {
        mnist_dir: {f"{stem}.gz" for pair in datasets.IDX_FILES.values() for stem in pair},
        fashion_dir: {stem for pair in datasets.IDX_FILES.values() for stem in pair},
        cifar10_dir: {"cifar-10-batches-py"}
        | {f"cifar-10-batches-py/{f}" for f in ("test_batch", "batches.meta")}
        | {f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)},
        cifar100_dir: {"cifar-100-python"}
        | {f"cifar-100-python/{f}" for f in ("train", "test", "meta")},
    }
    for directory, names in layouts.items():
        assert set(files_under(directory)) == names
    pairs = [
        (mnist_dir, mnist_data, 300, 100),
        (fashion_dir, fashion_data, 300, 100),
        (cifar10_dir, cifar10_data, 100, 50),
        (cifar100_dir, cifar100_data, 200, 100),
    ]
    for directory, expected, num_train, num_test in pairs:
        loaded = load_dataset(expected.name, directory, download=False)
        assert_same(loaded, expected)
        assert (len(loaded.train_y), len(loaded.test_y)) == (num_train, num_test)
        for labels in (loaded.train_y, loaded.test_y):
            assert torch.equal(labels.unique(), torch.arange(expected.num_classes))


def test_cifar_meta_names_every_class(cifar100_dir: Path) -> None:
    meta = read_cifar_pickle((cifar100_dir / "cifar-100-python" / "meta").read_bytes())
    assert meta[b"fine_label_names"][:2] == [b"class_0", b"class_1"]
    assert len(meta[b"fine_label_names"]) == 100


def test_data_dir_none_uses_the_environment_variable_then_the_cache(
    mnist_dir: Path, mnist_data: ImageDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    assert default_data_dir() == mnist_dir
    assert_same(load_dataset("MNIST", download=False), mnist_data)
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "plasticity_rl"


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(ConfigError, match=r"dataset: got 'svhn'; allowed: cifar10, cifar100, "):
        load_dataset("svhn", download=False)


# ---------------------------------------------------------------------------------------------
# IDX format


def test_write_idx_bytes_worked_by_hand(tmp_path: Path) -> None:
    # Labels [1, 2, 3]: magic 0x00000801 = 2049 (type 0x08 uint8, 1 dim), size 3, then data.
    write_idx(tmp_path / "labels", np.array([1, 2, 3], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == bytes.fromhex("00000801 00000003 010203")
    # Images (2, 1, 2): magic 0x00000803 = 2051, sizes 2, 1, 2, then 4 bytes row-major.
    write_idx(tmp_path / "images.gz", np.arange(4, dtype=np.uint8).reshape(2, 1, 2))
    raw = gzip.decompress((tmp_path / "images.gz").read_bytes())
    assert raw == bytes.fromhex("00000803 00000002 00000001 00000002 00010203")


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trips_every_type_code(dtype: str, tmp_path: Path) -> None:
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / "a.gz", array)
    loaded = read_idx(tmp_path / "a.gz")
    assert loaded.dtype == np.dtype(dtype) and np.array_equal(loaded, array)
    loaded[0, 0, 0] = 1  # writable, so torch.from_numpy shares it without a warning


def test_write_idx_refuses_types_without_a_code(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64 has no IDX type code"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))


def corrupt(raw: bytes, how: str) -> bytes:
    return {
        "wrong magic": b"\x12\x34" + raw[2:],
        "unknown type code": raw[:2] + b"\x07" + raw[3:],
        "truncated": raw[:-1],
        "trailing bytes": raw + b"\x00",
        "truncated header": raw[:10],
    }[how]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("wrong magic", r"not an IDX file \(magic bytes 12340803"),
        ("unknown type code", r"not an IDX file \(magic bytes 00000703"),
        # 300 images of 28x28: 16 header bytes + 235200 data bytes = 235216.
        ("truncated", r"truncated: 235215 bytes, but the header's shape \(300, 28, 28\)"),
        ("trailing bytes", r"trailing bytes: 235217 bytes, .* needs 235216"),
        ("truncated header", r"truncated IDX header \(10 bytes\)"),
    ],
)
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_corrupt_idx_file_names_the_file_and_the_problem(
    how: str, message: str, compress: bool, fashion_dir: Path, tmp_path: Path
) -> None:
    raw = (fashion_dir / "train-images-idx3-ubyte").read_bytes()
    shutil.copytree(fashion_dir, tmp_path, dirs_exist_ok=True)
    os.remove(tmp_path / "train-images-idx3-ubyte")
    bad = corrupt(raw, how)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    (tmp_path / name).write_bytes(gzip.compress(bad) if compress else bad)
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert str(tmp_path / name) in str(error.value)


def test_truncated_gzip_stream_is_reported(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])  # drop the gzip trailer
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte.gz: corrupt gzip"):
        load_dataset("mnist", tmp_path, download=False)


def test_swapped_files_fail_the_magic_number_check(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
    shutil.copy(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DatasetFormatError, match=r"magic 2051 .* got uint8 \(300,\)"):
        load_dataset("mnist", tmp_path, download=False)


def test_labels_outside_the_classes_are_refused(fashion_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fashion_dir, tmp_path, dirs_exist_ok=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(100, 10, dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match=r"range over \[10, 10\]; expected \[0, 9\]"):
        load_dataset("fashion_mnist", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# Missing files and downloads


def test_missing_file_without_download_names_file_dirs_and_source(
    mnist_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
    os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetNotFound) as error:
        load_dataset("mnist", tmp_path, download=False)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert message.startswith(
        f"mnist: t10k-images-idx3-ubyte(.gz) not found in {tmp_path} or {tmp_path / 'mnist'} "
        "(downloading is off); download it from "
        f"https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz into {tmp_path}"
    )
    assert "--data-dir" in message


def test_incomplete_cifar_folder_without_archive_is_not_found(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(cifar10_dir, tmp_path, dirs_exist_ok=True)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(
        DatasetNotFound,
        match=r"cifar10: cifar-10-batches-py/\{data_batch_1, .*"
        r"test_batch\} or cifar-10-python.tar.gz not found in ",
    ) as error:
        load_dataset("cifar10", tmp_path, download=False)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(error.value)


def test_offline_download_says_which_urls_failed_and_where_to_put_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    go_offline(monkeypatch)
    with pytest.raises(DatasetNotFound) as error:
        load_dataset("fashion_mnist", tmp_path, download=True)
    message = str(error.value)
    url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"
    assert f"fashion_mnist: train-images-idx3-ubyte(.gz) not found in {tmp_path}" in message
    assert f"downloading failed ({url}: <urlopen error no network in tests>)" in message
    assert f"download it from {url} into {tmp_path}" in message
    assert "apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist" in message
    assert files_under(tmp_path) == {}  # not even the target folder was created


def test_offline_mnist_tries_both_mirrors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    go_offline(monkeypatch)
    with pytest.raises(DatasetNotFound, match="ossci-datasets.*yann.lecun.com/exdb/mnist/train"):
        load_dataset("mnist", tmp_path)


def test_wrong_bytes_fail_the_checksum_and_leave_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = {
        f"{stem}.gz": b"not the published file" for p in datasets.IDX_FILES.values() for stem in p
    }
    requested = serve(monkeypatch, files)
    with pytest.raises(DatasetFormatError, match="differs from the published f68b3c2d"):
        load_dataset("mnist", tmp_path)
    assert len(requested) == 2  # both mirrors delivered wrong bytes
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_correct_download_falls_back_to_the_second_mirror_and_is_cached(
    mnist_dir: Path, mnist_data: ImageDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = {p.name: p.read_bytes() for p in mnist_dir.iterdir()}
    for name, data in files.items():  # the fake files' checksums stand in for the published ones
        monkeypatch.setitem(datasets.SOURCES["mnist"].md5, name, hashlib.md5(data).hexdigest())
    requested = serve(monkeypatch, files, offline=("https://ossci-datasets",))
    assert_same(load_dataset("mnist", tmp_path), mnist_data)
    assert requested[:2] == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz",
    ]
    assert sorted(files_under(tmp_path)) == ["mnist"] + sorted(f"mnist/{n}" for n in files)
    go_offline(monkeypatch)
    assert_same(load_dataset("mnist", tmp_path), mnist_data)  # read from the cache


def test_cifar_archive_download_is_read_without_extracting(
    cifar100_data: ImageDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    archive = write_dataset(cifar100_data, tmp_path / "src") / "cifar-100-python.tar.gz"
    data = archive.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setitem(datasets.SOURCES["cifar100"].md5, "cifar-100-python.tar.gz", md5)
    requested = serve(monkeypatch, {"cifar-100-python.tar.gz": data})
    assert_same(load_dataset("cifar100", tmp_path / "data"), cifar100_data)
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    assert sorted(files_under(tmp_path / "data")) == [
        "cifar100",
        "cifar100/cifar-100-python.tar.gz",
    ]


# ---------------------------------------------------------------------------------------------
# CIFAR pickles


def test_cifar_batch_stores_red_green_blue_planes_row_major(tmp_path: Path) -> None:
    # Image 1, green channel, row 0, column 2: plane offset 1 * 1024 + 0 * 32 + 2 = 1026.
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    images[1, 1, 0, 2] = 7
    write_cifar_batch(tmp_path / "batch", images, [3, 4], "labels")
    batch = read_cifar_pickle((tmp_path / "batch").read_bytes())
    assert batch[b"labels"] == [3, 4]
    assert batch[b"data"].shape == (2, 3072) and batch[b"data"][1, 1026] == 7
    assert batch[b"data"].sum() == 7


def test_pickles_written_by_old_numpy_are_accepted() -> None:
    # The official files (Python 2, numpy 1.x) name numpy.core.multiarray._reconstruct.
    images = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 32, 32)
    new = cifar_batch_bytes(images, [0, 1], "fine_labels")
    old = new.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != new
    batch = read_cifar_pickle(old)
    assert np.array_equal(batch[b"data"], images.reshape(2, 3072))


def test_cifar_writer_refuses_channels_last_images() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, 32, 32\) or \(N, 3072\)"):
        cifar_batch_bytes(np.zeros((1, 32, 32, 3), dtype=np.uint8), [0], "labels")


class CallsSystem:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def malicious_pickles(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "os.system": b"cos\nsystem\n(V" + command.encode() + b"\ntR.",
        "posix.system": pickle.dumps(CallsSystem(command), protocol=2),
    }


@pytest.mark.parametrize("which", ["os.system", "posix.system"])
def test_restricted_unpickler_refuses_os_system(which: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = malicious_pickles(marker)[which]
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global {which}"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    assert not marker.exists()


def test_malicious_cifar_file_is_refused_when_loading(cifar10_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(cifar10_dir, tmp_path, dirs_exist_ok=True)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        malicious_pickles(marker)["os.system"]
    )
    with pytest.raises(DatasetFormatError, match="test_batch: .* global os.system") as error:
        load_dataset("cifar10", tmp_path, download=False)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The real Fashion-MNIST, as Debian installs it


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_loads_read_only() -> None:
    before = files_under(DEBIAN_FASHION_MNIST)
    data = load_dataset("fashion_mnist", DEBIAN_FASHION_MNIST, download=False)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(data.test_y.bincount(), torch.full((10,), 1000))
    assert files_under(DEBIAN_FASHION_MNIST) == before
