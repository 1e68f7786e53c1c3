"""A study's lease: one live driver per study, wherever its drivers run.

``study.lock`` in the study directory is the lock of the driver running it now (pid, host, a
heartbeat); where the study's storage is elsewhere (an object store, another directory), the same
record is kept there as the shared lease, so drivers on other machines are refused too. This module
is the one reader and writer of both. A driver that loses its lease (taken by ``--break-lock``, or
not refreshed for longer than the stale time) is told through ``StudyLock.on_lost`` and must stop
writing into the study (``xtra.studies.runner``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.errors import StudyError
from xtra.fileio import atomic_write_json
from xtra.storage import StorageError, conditional

LOCK = "study.lock"
HEARTBEAT_S = 10.0  # the lock holder refreshes its heartbeat this often
STALE_BEATS = 6  # a holder silent for this many of its own beats is dead, whichever host it ran on
STALE_AFTER_S = STALE_BEATS * HEARTBEAT_S
HEARTBEAT_ENV = "XTRA_HEARTBEAT_S"  # a driver's beat (tests shorten it; the stale time follows it)
# Writes of a lease in object storage that another driver may overwrite before it sees ours (a holder
# whose refresh was already under way when --break-lock wrote): each attempt waits settle_s.
SHARED_LEASE_ATTEMPTS = 5


# ---------------------------------------------------------------------------------------------
# The lock: a lease with a heartbeat, one live runner per study directory


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (guards against a recycled pid); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def heartbeat_age(info: dict[str, Any]) -> float:
    """Seconds since the holder last refreshed the lease (a lock without a heartbeat counts as old)."""
    try:
        return max(0.0, time.time() - float(info["heartbeat"]))
    except (KeyError, TypeError, ValueError):
        return float("inf")


def stale_after(info: dict[str, Any]) -> float:
    """Seconds of silence after which a holder counts as dead: STALE_BEATS of its own beats."""
    try:
        return STALE_BEATS * max(float(info.get("heartbeat_s") or HEARTBEAT_S), 0.01)
    except (TypeError, ValueError):
        return STALE_AFTER_S


def default_heartbeat_s() -> float:
    try:
        return max(0.05, float(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S


def _alive(info: dict[str, Any]) -> bool:
    """Same host: the process decides (a dead pid is dead at once). Another host: the heartbeat decides,
    so a study requeued onto another node takes over a lease its dead holder stopped refreshing."""
    if info.get("host") != socket.gethostname():
        return heartbeat_age(info) < stale_after(info)
    pid = int(info.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = info.get("proc_start")
    return started is None or _proc_start(pid) in (None, started)


def read_lock(study_dir: Path) -> dict[str, Any] | None:
    info = td.read_json(Path(study_dir) / LOCK)
    return info if isinstance(info, dict) else None


def _read_shared(storage: Any) -> dict[str, Any] | None:
    """The lease kept in an object store, or None (absent or unreadable garbage)."""
    if not storage.is_file(LOCK):
        return None
    try:
        info = storage.read_json(LOCK)
    except (ValueError, StorageError):  # removed meanwhile, or half-written garbage
        return None
    return info if isinstance(info, dict) else None


def lock_holder(study_dir: Path, storage: Any = None) -> dict[str, Any] | None:
    """The live process holding the study's lock, or None; with ``storage`` (an object store the
    directory is a copy of), also a driver on another machine holding the lease there."""
    info = read_lock(study_dir)
    if info is not None and _alive(info):
        return info
    info = _read_shared(storage) if storage is not None else None
    return info if info is not None and _alive(info) else None


def _refusal(where: object, holder: dict[str, Any]) -> StudyLocked:
    return StudyLocked(f"{where}: in use by {describe_holder(holder)}; wait for it, stop it, "
                       f"or pass --break-lock if you know it is gone")


def describe_holder(info: dict[str, Any]) -> str:
    age = heartbeat_age(info)
    beat = "no heartbeat" if age == float("inf") else f"heartbeat {age:.0f}s ago"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command', '?')}, since "
            f"{info.get('started', '?')}, {beat})")


class LeaseTaken(Exception):
    """The study's lock (or, ``shared``, its lease in storage) now belongs to someone else (``holder``:
    their record; None: removed)."""

    def __init__(self, holder: dict[str, Any] | None, shared: bool = False) -> None:
        super().__init__(describe_holder(holder) if holder else "removed")
        self.holder, self.shared = holder, shared


@dataclass
class StudyLock:
    """``with StudyLock(dir, "xtra study run"):`` -- refuses (StudyLocked) while another live process
    holds it; takes over a lock whose holder is dead (same host) or silent (any host). While held, a
    thread refreshes the heartbeat every ``heartbeat_s``. ``break_lock`` takes it whatever the holder.

    ``storage``: the study's storage when it is not the study directory itself (an object store).
    Drivers on different machines hold different local copies, so the lease is also kept there
    (``STORAGE/study.lock``) and refused the same way. Where the store writes conditionally (S3,
    MinIO: ``If-None-Match: *`` / ``If-Match``), of two drivers exactly one gets it at once, and each
    refresh replaces the lease only if it is still the version this holder last wrote; elsewhere the
    lease is written, then read back after ``settle_s``: of two drivers writing at once, only the one
    whose lease is still there goes on (the other sees the winner and is refused).

    A holder can lose the study: another driver takes the lock or the lease (``--break-lock``), or the
    refresh fails for longer than the stale time (after which others may take it). Then ``lost`` says
    so in one line and ``on_lost(lost)`` is called once, from the heartbeat thread; the holder must
    stop writing into the study (``xtra.studies.runner`` stops its trials and exits)."""

    study_dir: Path
    command: str
    break_lock: bool = False
    heartbeat_s: float = field(default_factory=default_heartbeat_s)
    storage: Any = None
    settle_s: float = 1.0
    on_lost: Callable[[str], None] | None = None
    took_over: dict[str, Any] | None = field(default=None, init=False)
    broke: dict[str, Any] | None = field(default=None, init=False)  # a live holder taken with break_lock
    lost: str | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _me: dict[str, Any] = field(default_factory=dict, init=False)
    _etag: str | None = field(default=None, init=False)  # the shared lease's version we last wrote

    @property
    def path(self) -> Path:
        return Path(self.study_dir) / LOCK

    @property
    def _timeout(self) -> float:
        """A refresh that takes longer than a few beats has failed: say so while the lease still holds."""
        return min(conditional.TIMEOUT_S, max(1.0, 2 * self.heartbeat_s))

    @property
    def stale_after_s(self) -> float:
        return stale_after(self._me or {"heartbeat_s": self.heartbeat_s})

    def acquire(self) -> StudyLock:
        Path(self.study_dir).mkdir(parents=True, exist_ok=True)
        self._me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command,
                    "heartbeat": time.time(), "heartbeat_s": self.heartbeat_s, "token": secrets.token_hex(8)}
        self._acquire_local()
        if self.storage is not None:
            try:
                self._acquire_shared()
            except BaseException:
                self._release_local()
                raise
        self._thread = threading.Thread(target=self._beat, name="xtra-study-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _record(self) -> dict[str, Any]:
        return {**self._me, "heartbeat": time.time()}

    def _encoded(self) -> bytes:
        return (json.dumps(self._record(), indent=2, sort_keys=True, default=str) + "\n").encode()

    def _acquire_shared(self) -> None:
        """The lease in storage (see the class doc): refuse a live holder, else write ours and check it stuck."""
        where = self.storage.uri_of(LOCK)
        try:
            return self._acquire_conditional(where)
        except conditional.Unsupported:
            pass  # a store without conditional writes: write, wait settle_s, read back
        for _ in range(SHARED_LEASE_ATTEMPTS):
            other = _read_shared(self.storage)
            if other is not None and other.get("token") != self._me["token"]:
                if _alive(other) and not self.break_lock:
                    raise _refusal(where, other)
                self._take_over(other)
            self.storage.write_json(LOCK, self._record())
            time.sleep(self.settle_s)
            now = _read_shared(self.storage)
            if now is not None and now.get("token") == self._me["token"]:
                return
            if self.break_lock:  # two breakers at once: the later one wins the retry
                continue
        raise StudyLocked(f"{where}: another driver took the lease at the same time; try again")

    def _acquire_conditional(self, where: str) -> None:
        """The lease by a conditional write (``xtra.storage.conditional``): created only if absent, taken
        over only if unchanged since read, so of two drivers exactly one gets it, with no wait."""
        for _ in range(SHARED_LEASE_ATTEMPTS):
            got = conditional.read(self.storage, LOCK)
            if got is not None:
                try:
                    other = json.loads(got[0])
                except ValueError:
                    other = None  # garbage: taken over
                if isinstance(other, dict) and other.get("token") != self._me["token"]:
                    if _alive(other) and not self.break_lock:
                        raise _refusal(where, other)
                    self._take_over(other)
            etag = conditional.put(self.storage, LOCK, self._encoded(), etag=got[1] if got else None)
            if etag:
                self._etag = etag
                return
        raise StudyLocked(f"{where}: another driver took the lease at the same time; try again")

    def _acquire_local(self) -> None:
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = read_lock(self.study_dir)
                if other is None:  # being written right now, or garbage
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
                    if age < 5:
                        time.sleep(0.2)
                        continue
                elif _alive(other) and not self.break_lock:
                    raise _refusal(self.study_dir, other) from None
                if other is not None:
                    self._take_over(other)
                stale = self.path.with_name(f".{LOCK}.stale.{os.getpid()}")
                try:  # rename first so two processes cannot both take over the same stale lock
                    os.replace(self.path, stale)
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._me) + "\n")
            return
        raise StudyLocked(f"{self.study_dir}: could not take the lock {self.path}")

    def _take_over(self, other: dict[str, Any]) -> None:
        self.took_over = self.took_over or other
        if self.broke is None and _alive(other):
            self.broke = other

    def wait_for_broken(self, timeout: float) -> str | None:
        """After ``break_lock`` took the study from a live driver: give it time to hear so (its next
        beat) and stop its running trials, so that no trial runs under two drivers. On this host, wait
        until its process has exited (at most ``timeout``); a driver on another host cannot be watched,
        so say what may happen. Returns a note for the user, or None when no live driver was broken."""
        old = self.broke
        if old is None:
            return None
        who = describe_holder(old)
        if old.get("host") != socket.gethostname():
            return (f"took the study from the live {who} (--break-lock): it stops at its next beat, and a trial it "
                    f"is finishing meanwhile may also run here")
        start = time.monotonic()
        while _alive(old) and time.monotonic() - start < timeout:
            time.sleep(0.2)
        waited = time.monotonic() - start
        if _alive(old):
            return f"took the study from the live {who} (--break-lock); it was still running after {waited:.0f} s"
        return f"took the study from the live {who} (--break-lock); waited {waited:.0f} s for it to stop"

    def _beat(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._refresh()
                last_refresh = time.monotonic()
            except LeaseTaken as taken:
                where = self.storage.uri_of(LOCK) if taken.shared else self.path
                return self._lose(f"{where}: taken by {taken}" if taken.holder else f"{where}: removed by another "
                                  f"process")
            except (StorageError, OSError) as err:
                silent = time.monotonic() - last_refresh
                if silent > self.stale_after_s:
                    where = self.storage.uri_of(LOCK) if self.storage is not None else self.path
                    return self._lose(f"{where}: not refreshed for {silent:.0f} s, past the {self.stale_after_s:g} s "
                                      f"after which another driver may take it ({' '.join(str(err).split())})")

    def _refresh(self) -> None:
        """One beat: our local lock, then the shared lease, each written only while still ours (LeaseTaken)."""
        info = read_lock(self.study_dir)
        if info is None or info.get("token", self._me["token"]) != self._me["token"] \
                or info.get("pid") != self._me["pid"] or info.get("host") != self._me["host"]:
            raise LeaseTaken(info)
        atomic_write_json(self.path, self._record())
        if self.storage is None:
            return
        if self._etag is not None:  # conditional: replace only the version we wrote last
            etag = conditional.put(self.storage, LOCK, self._encoded(), etag=self._etag, timeout=self._timeout)
            if not etag:
                got = conditional.read(self.storage, LOCK, timeout=self._timeout)
                raise LeaseTaken(_parse(got[0]) if got else None, shared=True)
            self._etag = etag
            return
        other = _read_shared(self.storage)
        if other is None or other.get("token") != self._me["token"]:
            raise LeaseTaken(other, shared=True)
        self.storage.write_json(LOCK, self._record())

    def _lose(self, why: str) -> None:
        self.lost = why
        if self.on_lost is not None:
            self.on_lost(why)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.storage is not None and self.lost is None:
            try:
                info = _read_shared(self.storage)
                if info is not None and info.get("token") == self._me.get("token"):
                    self.storage.delete(LOCK)
            except StorageError as err:  # the lease then goes stale on its own; say so rather than hide it
                warnings.warn(f"{self.storage.uri_of(LOCK)}: lease not removed ({err}); it expires after "
                              f"{self.stale_after_s:g} s", stacklevel=2)
        self._release_local()

    def _release_local(self) -> None:
        info = read_lock(self.study_dir)
        if info is not None and info.get("token", self._me.get("token")) == self._me.get("token") \
                and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(data)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class StudyLocked(StudyError):
    """Another live process is running this study directory."""


class StudyLeaseLost(StudyError):
    """This driver lost its study while running it (see ``StudyLock``): it wrote nothing more."""

    exit_code = 3  # the CLI's exit status: neither bad input (2) nor a stop to requeue on (75)


def is_running(study_dir: Path) -> bool:
    """A live runner (other than this process) holds the study."""
    holder = lock_holder(study_dir)
    return holder is not None and not (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname())
