"""Guests found by watching directories for QMP sockets (`[discovery] watch`).

`watch = ["/run/qemu/*.qmp"]`: every pattern's directory is watched with inotify (no polling:
the kernel says when a file appears or goes). A unix socket whose name matches appears ->
a guest to watch; it goes (QEMU removes its socket when it exits) -> the guest is dropped.
Sockets already there at start are found by one scan. The directory part of a pattern is
taken literally; the file-name part is a shell pattern (fnmatch).

inotify is reached through libc with ctypes: four calls, no dependency.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import fnmatch
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("panicd.discovery")

IN_CREATE = 0x100
IN_DELETE = 0x200
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x1000000
IN_ISDIR = 0x40000000
_FILES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_DIRS = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


class SocketWatcher:
    """Calls `appeared(path)` / `vanished(path)` for sockets matching the patterns."""

    def __init__(self, patterns: list[str], appeared: Callable[[Path], None],
                 vanished: Callable[[Path], None]) -> None:
        self.appeared = appeared
        self.vanished = vanished
        self._by_dir: dict[Path, list[str]] = {}
        for pattern in patterns:
            path = Path(pattern)
            self._by_dir.setdefault(path.parent, []).append(path.name)
        self._wds: dict[int, Path] = {}
        #: Parents watched until a pattern's directory appears (or comes back).
        self._parents: dict[int, Path] = {}
        self._libc: ctypes.CDLL | None = None
        self._fd = -1

    def _matches(self, path: Path) -> bool:
        return any(fnmatch.fnmatchcase(path.name, p) for p in self._by_dir.get(path.parent, []))

    async def run(self) -> None:
        """Watch until cancelled."""
        libc = _libc()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.error("discovery.unavailable", error=os.strerror(ctypes.get_errno()))
            return
        self._libc, self._fd = libc, fd
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        try:
            for directory in self._by_dir:
                self._arm(directory)
            self._scan()
            loop.add_reader(fd, readable.set)
            while True:
                await readable.wait()
                readable.clear()
                self._read(fd)
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _arm(self, directory: Path) -> bool:
        """Watch `directory`; if it does not exist (yet, or any more), watch its parent for it."""
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _FILES)
        if wd >= 0:
            self._wds[wd] = directory
            log.info("discovery.watching", directory=str(directory),
                     patterns=self._by_dir[directory])
            return True
        error = os.strerror(ctypes.get_errno())
        pwd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory.parent), _DIRS)
        if pwd < 0:
            log.error("discovery.cannot_watch", directory=str(directory), error=error)
            return False
        self._parents[pwd] = directory.parent
        log.warning("discovery.waiting_for_directory", directory=str(directory), error=error)
        return False

    def _scan(self) -> None:
        for directory in self._wds.values():
            try:
                entries = sorted(directory.iterdir())
            except OSError:
                continue
            for path in entries:
                if self._matches(path) and _is_socket(path):
                    self.appeared(path)

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                log.warning("discovery.overflow")  # events were lost: look again
                self._scan()
                continue
            if mask & IN_IGNORED and wd in self._wds:  # the directory went: wait for it again
                self._arm(self._wds.pop(wd))
                continue
            if wd in self._parents and mask & IN_ISDIR and raw:
                self._directory_appeared(self._parents[wd] / os.fsdecode(raw.rstrip(b"\0")))
                continue
            directory = self._wds.get(wd)
            if directory is None or not raw:
                continue
            path = directory / os.fsdecode(raw.rstrip(b"\0"))
            if not self._matches(path):
                continue
            if mask & (IN_CREATE | IN_MOVED_TO) and _is_socket(path):
                self.appeared(path)
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                self.vanished(path)

    def _directory_appeared(self, directory: Path) -> None:
        if directory in self._by_dir and directory not in self._wds.values() and self._arm(directory):
            self._scan()
