"""GPU detection: the device picks the preset; --gpu may only confirm it."""
import pytest

from nexus.errors import UserError
from real.gpu_detect import detect_gpu, match_preset

H200 = {"name": "NVIDIA H200", "num_sms": 132, "memory_bytes": 150_754_820_096, "compute_capability": "9.0"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "num_sms": 132, "memory_bytes": 85_045_870_592, "compute_capability": "9.0"}
B_UNKNOWN = {"name": "NVIDIA Future X", "num_sms": 148, "memory_bytes": 190 * 2**30, "compute_capability": "10.0",
             "max_sm_clock_hz": 1.9e9, "max_mem_clock_hz": 4.0e9, "memory_bus_bits": 8192}


def test_the_device_picks_its_preset():
    assert match_preset(H200).name == "h200"
    assert match_preset(H100).name == "h100-sxm"
    assert detect_gpu(None, "cuda", facts=H200).name == "h200"


def test_a_contradicting_gpu_flag_is_an_error():
    with pytest.raises(UserError, match="--gpu h100-sxm does not match this device: NVIDIA H200"):
        detect_gpu("h100-sxm", "cuda", facts=H200)
    with pytest.raises(UserError, match="does not match"):
        detect_gpu("l20", "cuda", facts=H200)
    assert detect_gpu("h200", "cuda", facts=H200).name == "h200"


def test_an_unknown_gpu_gets_a_spec_from_device_queries_and_one_warning():
    warnings = []
    spec = detect_gpu(None, "cuda", warn=warnings.append, facts=B_UNKNOWN)
    assert spec.num_sms == 148 and spec.sm_step == 8 and spec.memory_bytes == 190 * 2**30
    assert spec.hbm_bandwidth == pytest.approx(2 * 4.0e9 * 8192 / 8)
    assert spec.peak_flops == pytest.approx(148 * 1.9e9 * 8192)
    assert len(warnings) == 1 and "analytical" in warnings[0] and "\n" not in warnings[0]
    assert spec.partition_sizes()[0] == 16


def test_cpu_runs_take_the_requested_spec():
    assert detect_gpu(None, "cpu").name == "h100-sxm"
    assert detect_gpu("l20", "cpu").name == "l20"


def test_asking_for_cuda_without_a_gpu_is_one_clean_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="torch sees no CUDA GPU"):
        detect_gpu(None, "cuda")
