"""Files that appear whole or not at all."""
import contextlib
import json
import os


@contextlib.contextmanager
def replacing(path, mode="w", **open_kwargs):
    """open() for writing whose file takes `path` only when the block ends: written to
    `path`.partial, then renamed, so a reader or a crash never sees half a file."""
    temp = path + ".partial"
    with open(temp, mode, **open_kwargs) as handle:
        yield handle
    os.replace(temp, path)


def write_json(path, value, indent=1):
    with replacing(path) as handle:
        json.dump(value, handle, indent=indent)
    return path


def read_json(path):
    """What write_json wrote, or None when `path` is not there (yet)."""
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)
