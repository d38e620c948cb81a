"""Files that appear whole or not at all."""
import contextlib
import os


@contextlib.contextmanager
def replacing(path, mode="w", **open_kwargs):
    """open() for writing whose file takes `path` only when the block ends: written to
    `path`.partial, then renamed, so a reader or a crash never sees half a file."""
    temp = path + ".partial"
    with open(temp, mode, **open_kwargs) as handle:
        yield handle
    os.replace(temp, path)
