import keras
import numpy as np
import pytest

from segtrain import optim


def _values(rate, steps):
    return np.array([float(rate(s)) if callable(rate) else rate for s in steps])


def test_warmup_then_schedule():
    rate = optim.learning_rate(0.1, "cosine", total_steps=110, warmup_steps=10)
    values = _values(rate, range(110))
    np.testing.assert_allclose(values[:10], 0.1 * np.arange(1, 11) / 10, rtol=1e-6)
    # after the warm-up: cosine decay from the peak over the remaining 100 steps
    expected = 0.1 * 0.5 * (1 + np.cos(np.pi * np.arange(100) / 100))
    np.testing.assert_allclose(values[10:], expected, rtol=1e-5, atol=1e-7)
    constant = _values(optim.learning_rate(0.01, "constant", 50, warmup_steps=5), range(8))
    np.testing.assert_allclose(constant, [0.002, 0.004, 0.006, 0.008, 0.01, 0.01, 0.01, 0.01],
                               rtol=1e-6)


def test_polynomial_ends_at_one_percent_and_serialises():
    rate = optim.learning_rate(0.2, "polynomial", 100, warmup_steps=4)
    assert abs(float(rate(104)) - 0.002) < 1e-6
    again = optim.Warmup.from_config(rate.get_config())
    for step in (0, 3, 50, 104):
        assert float(again(step)) == pytest.approx(float(rate(step)))


@pytest.mark.parametrize("name,cls", [("adam", keras.optimizers.Adam), ("sgd", keras.optimizers.SGD),
                                      ("adamw", keras.optimizers.AdamW),
                                      ("rmsprop", keras.optimizers.RMSprop)])
def test_build_optimizer(name, cls):
    assert isinstance(optim.build_optimizer(name, 1e-3), cls)
    with pytest.raises(ValueError, match="--optimizer"):
        optim.build_optimizer("lion", 1e-3)
