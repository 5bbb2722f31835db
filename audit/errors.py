"""The two error kinds the command line tells apart.

* ``AuditError`` -- bad input or an unusable state that the user can fix (a wrong option,
  a damaged file, a full disk): one ``error:`` line and exit code 2.
* ``InternalError`` -- a broken invariant inside the package, i.e. a bug: one line saying
  so, the traceback saved to a file, and exit code 1.
"""

from __future__ import annotations

import errno


class AuditError(ValueError):
    """Bad input or an unusable state: the message says what is wrong and what to do."""


class InternalError(RuntimeError):
    """A broken internal invariant (a bug in the package, not the user's input)."""


# OSError numbers that describe the user's environment, not a bug, and what to do about them
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space and run the same command again "
                  "(finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the same command again (finished work is kept)",
    errno.EACCES: "permission denied; choose a folder you can write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to or fix its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a component of the path is a file, not a folder; choose another path",
    errno.EISDIR: "the path is a folder, not a file; choose a file path",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter path",
}


def environment_error(exc: OSError) -> AuditError | None:
    """An ``AuditError`` for an OSError the user can fix (disk full, no permission), else None."""
    hint = _ENVIRONMENT_ERRNOS.get(exc.errno)
    if hint is None:
        return None
    where = "" if exc.filename is None else str(exc.filename)
    name = where.rsplit("/", 1)[-1]
    if name.startswith(".") and name.endswith(".tmp"):  # our temporary file: the folder is what matters
        where = where.rsplit("/", 1)[0] if "/" in where else "."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and where:
        return AuditError(f"{where} is not writable ({exc.strerror}); {hint.split('; ', 1)[1]}")
    return AuditError(f"{where}: {hint}" if where else hint)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
