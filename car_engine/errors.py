"""Every error a user can act on, and the exit code each one maps to (the CLI's only map)."""

from __future__ import annotations

import errno

EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it)",
    2: "usage error (bad flags)",
    3: "bad input data (the message names the file and line or item)",
    4: "cannot write output (no space, no permission)",
    5: "model, device or environment problem (a checkpoint missing, unsafe or mismatched; a "
       "GPU asked for and not usable; two builds of one package installed)",
    130: "interrupted",
}


class CorpusError(ValueError):
    """Bad input data: a bad item in ``strict`` mode, or a file that cannot be read at all."""


class UsageError(ValueError):
    """A combination of arguments that cannot work; the message says which."""


class RunDirBusy(UsageError):
    """Another car-engine process holds the run folder's lock."""


class ModelError(RuntimeError):
    """A model or checkpoint that is missing, unsafe to load, or does not fit."""


class DeviceError(RuntimeError):
    """A device asked for and not usable as asked (no GPU, no CUDA provider, FAISS without GPU
    support), or an environment that cannot run it (two builds of one package installed)."""


class OutputError(RuntimeError):
    """An output path that cannot be used as asked (a file where a folder must be)."""


def exit_code_for(err: BaseException) -> tuple[int, str]:
    """Map an exception to (exit code, one-line message)."""
    if isinstance(err, CorpusError):
        return 3, str(err)
    if isinstance(err, UsageError):
        return 2, str(err)
    if isinstance(err, (ModelError, DeviceError)):
        return 5, str(err)
    if isinstance(err, OutputError):
        return 4, str(err)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
            return 4, f"{err.strerror}{where}"
        return 4, f"{err.strerror or err}{where}"
    if isinstance(err, ValueError):
        return 3, str(err)
    return 1, f"{type(err).__name__}: {err}"
