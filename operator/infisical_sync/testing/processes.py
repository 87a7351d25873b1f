"""Child processes for tests and the demo: started with a log file, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoggedProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 60) -> None:
        """Until `text` appears in the log; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} never appeared; log tail:\n{self.log()[-3000:]}")
            time.sleep(0.2)


@contextlib.contextmanager
def logged_process(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[LoggedProcess]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield LoggedProcess(process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
