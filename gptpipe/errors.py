"""The one error type users see: a clear message naming the file or key and the fix, no traceback."""

import errno
import signal
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (params, files, data, CLI args). Printed as one message, exit code 2."""


def cause(e: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters) of a library's exception, for a UserError."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the stage is, so every `with` block on the way out cleans up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum, frame):
    raise Interrupted(signum)


@contextmanager
def user_errors(where: str):
    """Turn UserError, a full disk, Ctrl-C and SIGTERM into a one-line message and a non-zero exit.

    Outputs are written to temporary paths renamed into place at the end (gptpipe.io.atomic_dir), so
    each of these leaves the previous outputs as they were. SIGTERM (a Prefect cancel, Kubernetes, systemd)
    is handled like Ctrl-C, and both are handled whatever disposition the process inherited: a shell's
    background job starts its children with SIGINT ignored.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        yield
    except UserError as e:
        print(f"error [{where}]: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error [{where}]: disk full writing {e.filename or 'an output'}: free some space and rerun; "
              "outputs left as they were before this run", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted [{where}]: outputs left as they were before this run", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))

