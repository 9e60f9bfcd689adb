"""Run a command as a child that keeps this process's stdin/stdout, and record its pid and exit code.

    python -m tests.support.pidwrap FILE -- COMMAND...

A test that lets a client spawn a server (the SDK's stdio client does) can then signal the
server itself and read how it ended: FILE holds the pid once started, FILE.rc the exit code.
Standard library only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    record, command = Path(argv[0]), argv[argv.index("--") + 1 :]
    child = subprocess.Popen(command)
    record.write_text(str(child.pid))
    code = child.wait()
    record.with_suffix(".rc").write_text(str(code))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
