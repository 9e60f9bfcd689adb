"""The client's pipes as private descriptors: claimed at start, polled, written whole.

Standard library only: the fast start claims the descriptors before anything is imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import stat

PIPE_SIZE = 1 << 20


def claim() -> tuple[int, int]:
    """(in_fd, out_fd): private duplicates of the client's stdin/stdout; fd 0 -> /dev/null, fd 1 -> stderr.

    Nothing else in the process can then write to the client by accident (a library printing
    to stdout lands on stderr). Where the system allows, both pipes grow to 1 MiB, so a large
    result or request crosses in one write instead of sixteen 64 KiB hand-offs.
    """
    in_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    out_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    os.dup2(2, 1)
    for fd in (in_fd, out_fd):
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # Linux only
    return in_fd, out_fd


def pollable(fd: int) -> bool:
    """Whether the event loop can wait on `fd`: pipes, sockets and terminals can; regular files cannot.

    Asked of the selector the event loop uses. A descriptor it refuses is read in a worker
    thread, which is only safe where a read cannot block forever (a file ends): a terminal
    read in a thread would keep the process alive after Ctrl-C.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return True
    if not stat.S_ISCHR(mode):
        return False
    with selectors.DefaultSelector() as selector:
        try:
            selector.register(fd, selectors.EVENT_READ)
        except (OSError, ValueError):
            return False
    return True


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, waiting where the descriptor is non-blocking and full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            import select

            select.select([], [fd], [])
