"""GPU memory measured from a real CUDA workload (flare_eval/harness/cuda/alloc_steps.cu).

The workload is compiled here with nvcc wherever nvcc exists. The measurement tests need a GPU that NVML
finds and, for containers, the engine's NVIDIA runtime: they skip with the reason where either is missing,
and fail instead when FLARE_EVAL_REQUIRE_GPU=1.
"""

import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from teams import IMAGE_CHANGES

from flare_eval.harness.gpu_check import (
    TOLERANCE,
    Measurement,
    WorkloadPlan,
    build_workload,
    expected_measurement,
    run_on_host,
    workload_events,
    workload_image,
)

ALLOWANCE_MIB = 2048.0


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("FLARE_EVAL_REQUIRE_GPU") == "1":
        pytest.fail(f"FLARE_EVAL_REQUIRE_GPU=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    require(shutil.which("nvcc") is not None, "nvcc is not installed: the CUDA workload cannot be compiled")
    return build_workload(tmp_path_factory.mktemp("cuda"))


@pytest.fixture(scope="module")
def gpu():
    from flare_eval.harness.sampler import GpuUnavailable, NvmlGpu

    try:
        device = NvmlGpu(0)
    except GpuUnavailable as exc:
        require(False, f"no GPU: {exc}")
    yield device
    device.close()


@pytest.fixture(scope="module")
def context_mib(workload, gpu):
    measured, _ = run_on_host(workload, gpu, WorkloadPlan(64, 0, 0.0, 2.0), ALLOWANCE_MIB)
    assert 50 < measured.max_gpu_mib < 2048  # a CUDA context takes some hundreds of MiB
    return measured.max_gpu_mib


def test_the_workload_compiles_and_says_clearly_when_there_is_no_gpu(workload):
    result = subprocess.run([str(workload), "16", "1", "0.1", "0.1"], capture_output=True, text=True)
    if result.returncode == 3:  # no usable GPU here
        assert "no usable GPU" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        names = [name for name, _, _ in workload_events(result.stdout)]
        assert names == ["context", "allocated", "freed"]


def test_expected_curve_hand_worked():
    events = [("context", 0.1, 0), ("allocated", 1.1, 1024), ("allocated", 2.1, 2048), ("allocated", 3.1, 3072),
              ("freed", 5.1, 0)]
    # context 300 MiB: 300, 1324, 2348, 3372 MiB; above 2048: 0, 0, 300 (1 s), 1324 (2 s)
    expected = expected_measurement(events, 300.0, ALLOWANCE_MIB)
    assert expected.max_gpu_mib == 3372.0
    assert expected.auc_gpu_mib_s == pytest.approx(300.0 + 2 * 1324.0, rel=1e-12)


def close(measured: Measurement, expected: Measurement) -> bool:
    return (abs(measured.max_gpu_mib - expected.max_gpu_mib) <= TOLERANCE * expected.max_gpu_mib
            and abs(measured.auc_gpu_mib_s - expected.auc_gpu_mib_s) <= TOLERANCE * expected.auc_gpu_mib_s)


@pytest.mark.gpu
def test_host_process_measured_against_the_known_allocation(workload, gpu, context_mib):
    plan = WorkloadPlan(1024, 4, 1.0, 2.0)
    measured, output = run_on_host(workload, gpu, plan, ALLOWANCE_MIB)
    expected = expected_measurement(workload_events(output), context_mib, ALLOWANCE_MIB)
    assert close(measured, expected), (measured, expected)


@pytest.fixture(scope="module")
def engine_with_gpus(engine):
    require("nvidia" in engine.info().get("Runtimes", {}), "the Docker engine has no NVIDIA runtime")
    return engine


@pytest.mark.gpu
@pytest.mark.parametrize("reading", ["container", "device_total"])
def test_container_measured_against_the_known_allocation(workload, gpu, context_mib, engine_with_gpus, tmp_path,
                                                         reading):
    import json
    from dataclasses import replace

    from flare_eval import Submission, load_protocol, run_containers
    from flare_eval.io import write_label_map

    plan = WorkloadPlan(1024, 4, 1.0, 2.0)
    tag = f"flare-eval-test/gpu-workload:{reading}"
    image_id = workload_image(engine_with_gpus, workload, tag, changes=(IMAGE_CHANGES[-1],))
    write_label_map(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "in" / "g_0000.nii.gz")
    protocol_path = tmp_path / "p.json"
    protocol_path.write_text(json.dumps({"extends": "flare22", "resources": {"gpu_memory": reading}}))
    protocol = load_protocol(protocol_path)
    interface = replace(protocol.container, command=("/alloc_steps", *plan.arguments()))
    idle_mib = gpu.used_mib()
    try:
        resources = run_containers([Submission("w", image=tag)], tmp_path / "in", tmp_path / "runs", protocol,
                                   gpus=gpu.index, interface=interface, progress=False, keep_images=True)
    finally:
        engine_with_gpus.images.remove(image_id, force=True)
    row = resources.iloc[-1]
    events = workload_events((tmp_path / "runs" / "w" / "logs" / "g.log").read_text())
    if reading == "device_total":
        assert row.gpu_mode == "device_total"
        expected = expected_measurement(events, context_mib + idle_mib, ALLOWANCE_MIB)
    else:
        assert row.gpu_mode in ("per_process", "device_minus_baseline")
        expected = expected_measurement(events, context_mib, ALLOWANCE_MIB)
    assert close(Measurement(row.max_gpu_mib, row.auc_gpu_mib_s), expected), (row.to_dict(), expected)


@pytest.mark.gpu
def test_per_process_reading_attributes_memory_to_the_right_container(workload, gpu, context_mib,
                                                                      engine_with_gpus, tmp_path):
    """A host process holding 3 GiB on the same GPU is not charged to the container."""
    from dataclasses import replace

    from flare_eval import Submission, load_protocol, run_containers
    from flare_eval.io import write_label_map

    bystander = subprocess.Popen([str(workload), "3072", "1", "0.0", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert bystander.stdout.readline().startswith("event context")
        assert bystander.stdout.readline().startswith("event allocated")
        plan = WorkloadPlan(512, 2, 1.0, 1.0)
        tag = "flare-eval-test/gpu-workload:attribution"
        image_id = workload_image(engine_with_gpus, workload, tag, changes=(IMAGE_CHANGES[-1],))
        write_label_map(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "in" / "g_0000.nii.gz")
        interface = replace(load_protocol("flare22").container, command=("/alloc_steps", *plan.arguments()))
        try:
            resources = run_containers([Submission("w", image=tag)], tmp_path / "in", tmp_path / "runs",
                                       gpus=gpu.index, interface=interface, progress=False, keep_images=True)
        finally:
            engine_with_gpus.images.remove(image_id, force=True)
    finally:
        bystander.kill()
        bystander.wait()
        time.sleep(0.5)
    row = resources.iloc[-1]
    assert row.gpu_mode == "per_process", "the driver does not report per-process memory here"
    assert row.max_gpu_mib == pytest.approx(context_mib + 1024, rel=TOLERANCE)
