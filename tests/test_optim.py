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


def test_parse_image_size():
    from segtrain import cli
    assert cli.parse_image_size("512") == (512, 512)
    assert cli.parse_image_size("360,480") == (360, 480)
    assert cli.parse_image_size("360x480") == (360, 480)
    for bad in ("", "0", "a,b", "1,2,3"):
        with pytest.raises(ValueError, match="--image_size"):
            cli.parse_image_size(bad)


def test_augment_config_from_flags_reads_only_defined_flags():
    from absl import flags as absl_flags

    from segdata import augment
    values = absl_flags.FlagValues()
    absl_flags.DEFINE_bool("aug_hflip", True, "", flag_values=values)
    absl_flags.DEFINE_float("aug_rotation", 12.5, "", flag_values=values)
    absl_flags.DEFINE_float("unrelated", 3.0, "", flag_values=values)
    values(["prog"])
    config = augment.AugmentConfig.from_flags(values)
    assert config == augment.AugmentConfig(hflip=True, rotation=12.5)
