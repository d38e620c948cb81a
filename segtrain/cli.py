"""Flag-value parsing shared by train.py and the tools (pure Python: no TensorFlow, so the
JAX-only benchmark can use it)."""


def parse_image_size(text):
    """'512' -> (512, 512); '360,480' or '360x480' -> (360, 480); anything else: ValueError."""
    parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"--image_size={text!r}: expected '512' or 'H,W' like '360,480'")
    return size
