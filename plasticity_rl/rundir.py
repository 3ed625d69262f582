"""What every run directory shares, RL and supervised: checkpoints, ``status.json``, a lock and
the signals that stop a run.

- Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) hold only tensors and plain
  data and are loaded with ``torch.load(weights_only=True)``. Each is written to a temporary
  file, synced and renamed, beside a ``<file>.sha256`` sidecar; the checkpoint it replaces is
  kept as ``previous.pt`` (with its sidecar). Loading verifies the checksum and falls back to
  ``previous.pt`` when ``latest.pt`` is damaged; a disk that fills up while writing leaves the
  old checkpoints as they were (:class:`DiskFull`).
- ``status.json`` (:func:`write_status`): ``running``, ``complete``, ``stopped``,
  ``interrupted``, ``diverged`` or ``failed``, with the step counts, replaced atomically.
- ``run.pid`` (:class:`RunLock`): one process per run directory.
- SIGINT, SIGTERM and SIGHUP (:class:`StopSignals`) ask the loop to stop at its next safe
  point, checkpoint and exit with 128 + the signal number (130, 143, 129).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from plasticity_rl.registry import ConfigError

CHECKPOINT = Path("checkpoints") / "latest.pt"
"""The newest checkpoint, relative to the run directory."""
PREVIOUS = "previous.pt"
"""The checkpoint ``latest.pt`` replaced, beside it."""
STATUS = "status.json"
LOCK = "run.pid"
EXIT_DIVERGED = 3
"""Exit status of a run whose training loss became NaN or infinite."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DiskFull(OSError):
    """The disk filled up while a run file was written; the previous files are unchanged."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp_path)``, fsync, rename over ``path``; on any error the temporary file is
    removed (disk full becomes :class:`DiskFull`) and ``path`` is untouched."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise DiskFull(path) from None
        if isinstance(err, RuntimeError) and "No space left on device" in str(err):
            raise DiskFull(path) from None  # torch.save reports ENOSPC as a RuntimeError
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content by ``text`` atomically (readers see the old or the new)."""
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` (``.../checkpoints/latest.pt``) with its sha256 sidecar,
    keeping the checkpoint it replaces as ``previous.pt``.

    Raises:
        DiskFull: the disk filled up; ``latest.pt`` and ``previous.pt`` are unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".new")
    _write_atomic(staged, lambda tmp: torch.save(state, tmp))
    write_text_atomic(_sidecar(staged), f"{_sha256(staged)}  {path.name}\n")
    if path.is_file():  # latest -> previous, the file and then its checksum
        previous = path.with_name(PREVIOUS)
        os.replace(path, previous)
        if _sidecar(path).is_file():
            os.replace(_sidecar(path), _sidecar(previous))
        else:
            _sidecar(previous).unlink(missing_ok=True)
    os.replace(staged, path)
    os.replace(_sidecar(staged), _sidecar(path))


def _read_verified(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` if its checksum matches; ``ValueError`` says why not."""
    sidecar = _sidecar(path)
    if sidecar.is_file():
        expected = sidecar.read_text().split()[:1]
        if expected != [_sha256(path)]:
            raise ValueError("its sha256 differs from the one recorded when it was written")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated, random bytes, a pickle with code, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"not a readable checkpoint ({first[:120]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"not a checkpoint (a {type(state).__name__})")
    return state


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The verified state of ``path`` (``latest.pt``), or of ``previous.pt`` beside it when
    ``latest.pt`` is missing or damaged (a warning says so on stderr).

    Raises:
        ConfigError: no intact checkpoint (key ``--resume``).
    """
    problems = []
    for candidate in (path, path.with_name(PREVIOUS)):
        if not candidate.is_file():
            problems.append(f"{candidate}: missing")
            continue
        try:
            state = _read_verified(candidate)
        except ValueError as err:
            problems.append(f"{candidate}: {err}")
            continue
        if candidate != path:
            print(f"warning: {problems[0]}; resuming from {candidate}", file=sys.stderr)
        return state
    raise ConfigError("--resume", str(path.parent.parent), "a run directory with an intact "
                      f"checkpoint ({'; '.join(problems)})")  # fmt: skip


def check_state_dict(
    what: str, saved: Any, current: dict[str, Any], path: Path, allow_extra: bool = False
) -> None:
    """Refuse a saved state dict whose tensors differ in name or shape from ``current``'s (a
    checkpoint of another network: other width, depth, layers or preset).

    ``allow_extra``: accept tensors that only the checkpoint has (a network that a method such
    as plasticity injection grew, checked before the method has grown this one).

    Raises:
        ConfigError: with the first difference (key ``--resume``).
    """
    if not isinstance(saved, dict):
        raise ConfigError("--resume", str(path), f"a checkpoint with a {what} state")
    for key, value in current.items():
        if not isinstance(value, torch.Tensor):
            continue
        other = saved.get(key)
        shape = None if not isinstance(other, torch.Tensor) else tuple(other.shape)
        if shape != tuple(value.shape):
            found = "missing" if shape is None else f"of shape {shape}"
            raise ConfigError("--resume", str(path), f"a checkpoint of this run's {what} "
                              f"({key} has shape {tuple(value.shape)} here, {found} in the "
                              "checkpoint)")  # fmt: skip
    extra = sorted(set(saved) - set(current))
    if extra and not allow_extra:
        raise ConfigError("--resume", str(path), f"a checkpoint of this run's {what} "
                          f"(it has {extra[:3]} that this run does not)")  # fmt: skip


FINISHED_STATES = ("complete", "diverged")
"""``status.json`` states of a run that has ended for good (a rerun would diverge again)."""


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """``status.json``: ``{"state": state, **fields}`` (step counts, ...), replaced atomically.

    On a full disk the old status stays (the run reports the full disk itself)."""
    try:
        write_text_atomic(run_dir / STATUS, json.dumps({"state": state, **fields}, indent=2) + "\n")
    except DiskFull:
        pass


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of ``run_dir``; ``{}`` if there is none or it is unreadable."""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir: Path, lock: str = LOCK) -> int | None:
    """The process id in ``run_dir``'s lock file ``lock`` if another live process holds it;
    None if it is free (no lock, a lock of this process, or one left by a process that is
    gone)."""
    try:
        pid = int((run_dir / lock).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and _alive(pid) else None


class RunLock:
    """``run.pid`` in a run directory while a process trains it; a second process is refused.

    A lock left by a process that no longer exists (``kill -9``) is taken over. ``lock`` names
    another lock file in ``run_dir`` (a sweep's trial lock beside the run directories). After a
    refusal, :attr:`holder` is the process id that held the lock.

    Raises:
        ConfigError: another live process holds the lock (key ``run directory``).
    """

    def __init__(self, run_dir: Path, lock: str = LOCK):
        self.path = run_dir / lock
        self.holder: int | None = None

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = lock_holder(self.path.parent, self.path.name)
                if pid is not None:
                    self.holder = pid
                    raise ConfigError("run directory", str(self.path.parent),
                                      f"one not being trained (process {pid} holds "
                                      f"{self.path})") from None  # fmt: skip
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise ConfigError("run directory", str(self.path.parent), f"a lock file {self.path} "
                          "that can be created")  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


class Interrupted(Exception):
    """The run stopped on a signal after checkpointing; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"{signal.Signals(signum).name} at step {step}")


class Diverged(Exception):
    """Training stopped because ``what`` became NaN or infinite at ``step``; the run directory's
    ``status.json`` (and a supervised run's ``results.json``) say ``diverged``."""

    exit_code = EXIT_DIVERGED

    def __init__(self, what: str, step: int):
        self.what, self.step = what, step
        super().__init__(f"{what} became NaN or infinite at step {step}")


class StopSignals:
    """While active, SIGINT, SIGTERM and SIGHUP set :attr:`received` instead of killing the
    process; the training loop polls it at its safe points. A second signal of the same kind
    stops at once (Python's default for SIGINT, termination for the others)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            try:
                self._old[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a Ray worker): keep the defaults
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}
