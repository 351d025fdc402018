"""What `python -m minitome.sample` says on its terminal, and how it stops.

Where this sits: minitome/sample.py runs a sampling run inside `signals_stop_the_run()` and says everything
through here: one progress line per step, warnings and errors as one line each on stderr, the written files'
names on stdout. Ctrl-C and SIGTERM become exceptions raised where the program is (KeyboardInterrupt,
`Terminated`), so that one `finally` removes what the run reserved, however often the signal comes.

How a run ends (`ending`): a refusal (bad input, minitome/checks.py's `Refusal`, the weights loader's
`WeightsError`) or a file that cannot be read or written is one line and exit status 2; Ctrl-C 130, SIGTERM 143;
running out of memory one line naming the size and batch, exit 1. Anything else is a bug in minitome, said as
one line that names it an internal error, exit 1; with MINITOME_TRACEBACK=1 its traceback is shown instead.
"""
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..checks import Refusal


class Progress:
    """One line per step on stderr: step, iterations per second, time left."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, time.perf_counter()

    def __call__(self, i: int, t: int, x0: torch.Tensor = None):  # x0, the clean estimate: the preview's
        elapsed = time.perf_counter() - self.start
        rate = (i + 1) / elapsed
        left = (self.steps - i - 1) / rate
        print(f"step {i + 1}/{self.steps} (t={t:g}) · {rate:.2f} it/s · {left:.0f} s left", file=sys.stderr, flush=True)


class Terminated(Exception):
    """SIGTERM, raised where the program is, so that cleaning up runs as for Ctrl-C."""


@contextmanager
def signals_stop_the_run():
    """Ctrl-C and SIGTERM raise where the program is (`stop`) inside the block, the handlers before restored
    after it; a signal ignored by whoever started the program stays ignored."""
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop(signum, frame):
    """Ctrl-C or SIGTERM, raised where the program is. Further signals are ignored from here on: a second Ctrl-C
    must not cut short the removal of what the run reserved (a handler that does nothing: with SIG_IGN, Python
    would raise for a signal already on its way)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def one_line_warnings(message, category, *rest):
    """Warnings as one line each on stderr: what the loader says about a file (a note), a prompt cut short."""
    from weights import WeightsNotice
    kind = "note" if issubclass(category, WeightsNotice) else "warning"
    print(f"minitome.sample: {kind}: {message}", file=sys.stderr, flush=True)


def print_name(path: Path):
    """A written file's name on stdout, as the bytes of the name (it need not be UTF-8 text). A reader that stops
    reading (`| head -1`) stops the names, not the images: stdout goes nowhere from then on."""
    stream = getattr(sys.stdout, "buffer", None)
    try:
        if stream is None:  # a text stream put in its place
            print(path, flush=True)
        else:
            stream.write(os.fsencode(path) + b"\n")
            stream.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def fail(message: str, status: int) -> int:
    print(f"minitome.sample: {message}", file=sys.stderr)
    return status


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def ending(error: BaseException, size: str = None) -> int:
    """The exit status for what stopped the program, said in one line (`size`: the run's size and batch as flags,
    once known, for running out of memory). With MINITOME_TRACEBACK=1 a bug is raised again, traceback and all."""
    from weights import WeightsError
    if isinstance(error, (Refusal, WeightsError, OSError)):
        return fail(f"error: {error}", 2)
    if isinstance(error, KeyboardInterrupt):
        return fail("interrupted", 130)
    if isinstance(error, Terminated):
        return fail("terminated", 143)
    first_line = (str(error).strip().split("\n") or [""])[0]
    if out_of_memory(error):
        return fail(f"error: out of memory{' at ' + size if size else ''} ({first_line})", 1)
    if os.environ.get("MINITOME_TRACEBACK") == "1":
        raise error
    return fail(f"internal error (a bug): {type(error).__name__}: {first_line}; run with MINITOME_TRACEBACK=1 to see "
                "its traceback", 1)
