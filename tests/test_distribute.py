"""Precision choice: mixed_bfloat16 on a CPU that only emulates bfloat16 gets a warning."""
import pytest
import tensorflow as tf

from segtrain import distribute

# the flags lines of two real CPUs, cut to the features around the ones that matter
SAPPHIRE_RAPIDS = ("flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 "
                   "avx512_fp16 amx_bf16 amx_tile amx_int8\n")
ZEN3 = "flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni vaes vpclmulqdq\n"
SKYLAKE_X = "flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl\n"


def cpuinfo(tmp_path, flags_line, name="cpuinfo"):
    path = tmp_path / name
    path.write_text("processor\t: 0\nvendor_id\t: X\n" + flags_line + "bogomips\t: 4890\n")
    return str(path)


@pytest.mark.parametrize("flags_line,native", [(SAPPHIRE_RAPIDS, True), (ZEN3, False),
                                               (SKYLAKE_X, False), ("", None)])
def test_cpu_bfloat16_support_is_read_from_the_feature_flags(tmp_path, flags_line, native):
    assert distribute.cpu_has_native_bfloat16(cpuinfo(tmp_path, flags_line)) is native


def test_unreadable_cpuinfo_means_unknown(tmp_path):
    assert distribute.cpu_has_native_bfloat16(str(tmp_path / "absent")) is None


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="CPU precision only")
def test_only_emulated_bfloat16_is_warned_about(tmp_path):
    emulated, native = cpuinfo(tmp_path, ZEN3), cpuinfo(tmp_path, SAPPHIRE_RAPIDS, "spr")
    warning = distribute.slow_precision_warning("mixed_bfloat16", emulated)
    assert "--mixed_precision=float32" in warning and emulated in warning
    assert distribute.slow_precision_warning("mixed_bfloat16", native) is None
    assert distribute.slow_precision_warning("float32", emulated) is None
    assert distribute.slow_precision_warning("mixed_bfloat16", str(tmp_path / "absent")) is None
