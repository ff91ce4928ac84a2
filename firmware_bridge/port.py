"""A serial port that comes back: opened by URL, reopened after it disappears.

Both ends of the link use it. Any pyserial URL works (a device path, ``socket://``,
``rfc2217://``, ``loop://``). When the port fails (cable pulled, USB adapter re-enumerated,
the other end of a pseudo-terminal closed) it is closed and tried again every ``reopen_s``;
reading returns nothing and writing reports False meanwhile, so the caller's loop keeps
running and its state (the verdict journal, pending repeats) is untouched. The outage is logged
once when it starts and once when it ends, in words for the operator.

``sim_port()`` makes the pseudo-terminal pair behind the config's ``port = "sim"``: this side
keeps the master, the line controller opens the printed path. ``relayed_ptys()`` makes two
pairs joined byte for byte by a thread, for a head side that must open a path itself (the
Modbus RTU server opens its port through pymodbus).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import termios
import time
import tty
from collections.abc import Callable

import serial

log = logging.getLogger("glass-inspect.bridge")


class FdPort:
    """The master side of a pseudo-terminal, with the few pyserial calls the link uses."""

    def __init__(self, fd: int, timeout: float) -> None:
        self.fd = fd
        self.timeout = timeout

    @property
    def in_waiting(self) -> int:
        buf = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, "little")

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, max(size, 1))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return b""
            raise serial.SerialException(f"read failed: {exc}") from None

    def write(self, data: bytes) -> int:
        view, deadline = memoryview(data), time.monotonic() + 1.0
        while view:
            left = deadline - time.monotonic()
            _, ready, _ = select.select([], [self.fd], [], max(left, 0))
            if not ready:
                raise serial.SerialTimeoutException("write timeout")
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def close(self) -> None:
        pass  # the pair lives as long as the process: the printed path must stay valid


def sim_port(timeout: float = 0.05) -> tuple[Callable[[], FdPort], str]:
    """A pseudo-terminal pair: an opener for this side, and the path for the line side."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
    os.set_blocking(master, False)
    port = FdPort(master, timeout)
    # The slave stays open here too, so the master never reads "end of file" when the line
    # controller disconnects; it just sees silence until one connects again.
    port.keep = slave  # type: ignore[attr-defined]
    return (lambda: port), os.ttyname(slave)


def relayed_ptys() -> tuple[str, str, Callable[[], None]]:
    """Two pseudo-terminals whose masters a daemon thread joins: (head path, line path,
    close). Bytes pass as they are, in both directions, with no framing of their own."""
    import threading

    pairs = []
    for _ in range(2):
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        pairs.append((master, slave))
    (ma, sa), (mb, sb) = pairs
    stop = threading.Event()

    def relay() -> None:
        other = {ma: mb, mb: ma}
        while not stop.is_set():
            try:
                ready, _, _ = select.select([ma, mb], [], [], 0.05)
            except OSError:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(other[fd], data)
                except OSError:  # nobody on that side yet, or its buffer full: bytes lost
                    pass

    thread = threading.Thread(target=relay, name="pty-relay", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(2)
        for fd in (ma, sa, mb, sb):
            with contextlib.suppress(OSError):
                os.close(fd)

    return os.ttyname(sa), os.ttyname(sb), close


class Link:
    """An always-retrying serial port. ``generation`` counts successful opens."""

    def __init__(self, url: str, baud: int = 115200, *, name: str = "serial port",
                 read_timeout: float = 0.05, write_timeout: float = 1.0, reopen_s: float = 0.5,
                 opener: Callable[[], object] | None = None) -> None:
        self.url = url
        self.baud = baud
        self.name = name
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.reopen_s = reopen_s
        self._opener = opener
        self._port = None
        self._next_try = 0.0
        self._down_since: float | None = None
        self._last_problem = ""
        self.generation = 0

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def _open(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            if self._opener is not None:
                port = self._opener()
            else:
                port = serial.serial_for_url(self.url, baudrate=self.baud,
                                             timeout=self.read_timeout,
                                             write_timeout=self.write_timeout, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._next_try = now + self.reopen_s
            problem = str(exc)
            if self._down_since is None:
                self._down_since = now
                log.warning("cannot open the %s %s (%s); trying again every %.1f s", self.name,
                            self.url, problem, self.reopen_s)
            elif problem != self._last_problem:
                log.info("the %s %s is still unavailable (%s)", self.name, self.url, problem)
            self._last_problem = problem
            return False
        self._port = port
        self.generation += 1
        if self._down_since is not None:
            log.warning("the %s %s is back after %.1f s", self.name, self.url,
                        now - self._down_since)
        else:
            log.info("%s %s is open", self.name, self.url)
        self._down_since = None
        self._last_problem = ""
        return True

    def _lost(self, exc: Exception) -> None:
        log.warning("lost the %s %s (%s); reopening every %.1f s until it is back", self.name,
                    self.url, exc, self.reopen_s)
        self.close()
        self._down_since = time.monotonic()
        self._last_problem = str(exc)
        self._next_try = time.monotonic() + self.reopen_s

    def read(self) -> bytes:
        """What arrived within about read_timeout; b"" on silence or while the port is down."""
        if self._port is None and not self._open():
            time.sleep(min(self.read_timeout, max(self._next_try - time.monotonic(), 0.001)))
            return b""
        try:
            n = self._port.in_waiting
            return self._port.read(n if n else 1)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            return b""

    def write(self, data: bytes) -> bool:
        if self._port is None and not self._open():
            return False
        try:
            self._port.write(data)
            return True
        except serial.SerialTimeoutException:
            log.warning("the other end of the %s %s is not reading; a line was dropped",
                        self.name, self.url)
            return False
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            return False

    def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None
