"""Flag-value parsing shared by train.py and the tools (pure Python: no TensorFlow, so the
JAX-only benchmark can use it)."""


def parse_image_size(text, flag="image_size"):
    """'512' -> (512, 512); '360,480' or '360x480' -> (360, 480); anything else: ValueError."""
    parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"--{flag}={text!r}: expected '512' or 'H,W' like '360,480'")
    return size



def parse_tile(text):
    """--tile: '' -> None (whole images), 'model' -> windows of the model's input size,
    'H,W' -> (H, W)."""
    if not text:
        return None
    if text == "model":
        return "model"
    try:
        return parse_image_size(text)
    except ValueError:
        raise ValueError(f"--tile={text!r}: expected 'model' or H,W like 512,512")


def flag_lines(text):
    """A flagfile's text -> {flag name: its line}; `--noname` lines are bool flag `name`."""
    lines = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, has_value, _ = line[2:].partition("=")
        if not has_value and name.startswith("no"):
            lines[name[2:]] = line  # bool flag x written as --nox
        lines[name] = line
    return lines


def changed_flags(previous_text, current_lines, names):
    """The flags in `names` whose line in `current_lines` ({name: line}) differs from the
    flagfile text of a previous run: [(name, previous line, current line)]."""
    previous = flag_lines(previous_text)
    changed = []
    for name in names:
        before, now = previous.get(name), current_lines.get(name)
        if before is not None and now is not None and before != now:
            changed.append((name, before, now))
    return changed
