"""The one error type users see: a clear message naming the file or key and the fix, no traceback."""

import errno
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (params, files, data, CLI args). Printed as one message, exit code 2."""


def cause(e: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters) of a library's exception, for a UserError."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


@contextmanager
def user_errors(where: str):
    """Turn UserError, a full disk and Ctrl-C into a one-line message and a non-zero exit.

    Outputs are written to temporary paths renamed into place at the end (gptpipe.io.atomic_dir), so
    each of these leaves the previous outputs as they were.
    """
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
    except KeyboardInterrupt:
        print(f"interrupted [{where}]: outputs left as they were before this run", file=sys.stderr)
        sys.exit(130)


def require_file(path, made_by: str):
    """Fail early, naming the missing input and the stage that makes it."""
    from pathlib import Path
    if not Path(path).exists():
        raise UserError(f"{path} not found: it is made by the {made_by} stage; run `dvc repro {made_by}`")
    return Path(path)
