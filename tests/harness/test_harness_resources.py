"""Resource metrics from recorded samples (pure functions), and the sampler's GPU logic with a fake NVML."""

import numpy as np
import pytest

from flare_eval.harness.resources import cpu_auc_pct_s, cpu_percent, gpu_auc_mib_s, summarize_run
from flare_eval.harness.sampler import (
    GPU_MODE_DEVICE,
    GPU_MODE_PER_PROCESS,
    CgroupCpu,
    ResourceSampler,
    cgroup_relative_path,
)

# Recorded NVML-like samples: irregular real timestamps, memory rising above the allowance.
TIMES_S = np.array([0.10, 0.21, 0.30, 0.42, 0.50, 0.61])
GPU_MIB = np.array([300.0, 2048.0, 3072.0, 4096.0, 4096.0, 1024.0])


def test_gpu_auc_is_the_trapezoid_over_real_timestamps_above_the_allowance():
    above = np.maximum(0, GPU_MIB - 2048)
    expected = sum((above[i] + above[i + 1]) / 2 * (TIMES_S[i + 1] - TIMES_S[i]) for i in range(len(TIMES_S) - 1))
    assert gpu_auc_mib_s(TIMES_S, GPU_MIB, 2048) == pytest.approx(expected)
    assert gpu_auc_mib_s(TIMES_S, GPU_MIB, 2048) == pytest.approx(np.trapezoid(above, TIMES_S))
    # The official nominal-interval sum differs when the interval drifts.
    assert gpu_auc_mib_s(TIMES_S, GPU_MIB, 2048) != pytest.approx(above.sum() * 0.1)
    assert gpu_auc_mib_s([0.1], [9000.0], 2048) == 0.0


def test_cpu_percent_is_interval_average_of_the_whole_machine():
    cpu_time = np.array([0.05, 0.10, 0.40, 0.40])  # cumulative CPU seconds
    times = np.array([0.1, 0.2, 0.5, 0.6])
    np.testing.assert_allclose(cpu_percent(cpu_time, times, n_cpus=2), [25.0, 25.0, 50.0, 0.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        cpu_percent([0.1, 0.2], [0.2, 0.2], n_cpus=1)
    with pytest.raises(ValueError, match="n_cpus"):
        cpu_percent([0.1], [0.2], n_cpus=0)


def test_cpu_auc_equals_integral_of_the_samples():
    cpu_time = np.array([0.05, 0.10, 0.40, 0.40])
    times = np.array([0.1, 0.2, 0.5, 0.6])
    pct = cpu_percent(cpu_time, times, n_cpus=4)
    integral = np.sum(pct * np.diff(times, prepend=0.0))
    assert cpu_auc_pct_s(0.40, n_cpus=4) == pytest.approx(integral)


def test_summarize_run_without_gpu():
    summary = summarize_run(TIMES_S, np.linspace(0.05, 0.3, 6), None, time_s=0.6, total_cpu_s=0.31, n_cpus=2,
                            allowance_mib=2048)
    assert summary.auc_gpu_mib_s == 0.0 and summary.max_gpu_mib == 0.0
    assert summary.auc_cpu_pct_s == pytest.approx(15.5)
    assert summary.n_samples == 6 and summary.time_s == 0.6


def test_cgroup_paths_and_reading(tmp_path):
    assert cgroup_relative_path("/flare-eval/ab12", "cgroupfs") == "flare-eval/ab12"
    assert cgroup_relative_path("flare_eval-ab12.slice", "systemd") == "flare_eval.slice/flare_eval-ab12.slice"
    # cgroup v2 layout
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    group = tmp_path / "flare-eval" / "x"
    (group / "child").mkdir(parents=True)
    (group / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (group / "cgroup.procs").write_text("")
    (group / "child" / "cgroup.procs").write_text("41\n42\n")
    cpu = CgroupCpu("flare-eval/x", root=tmp_path)
    assert cpu.version == 2 and cpu.usage_s() == 1.5 and cpu.pids() == {41, 42}
    assert CgroupCpu("flare-eval/absent", root=tmp_path).usage_s() is None


def test_cgroup_v1_reading(tmp_path):
    group = tmp_path / "cpuacct" / "flare-eval" / "y"
    group.mkdir(parents=True)
    (group / "cpuacct.usage").write_text("2500000000\n")
    pids = tmp_path / "pids" / "flare-eval" / "y"
    pids.mkdir(parents=True)
    (pids / "cgroup.procs").write_text("7\n")
    cpu = CgroupCpu("flare-eval/y", root=tmp_path)
    assert cpu.version == 1 and cpu.usage_s() == 2.5 and cpu.pids() == {7}


class FakeGpu:
    """Replays recorded NVML-like readings."""

    index, name, driver = 0, "Fake RTX", "510.60.02"

    def __init__(self, device_mib, process_mib):
        self.device_mib, self.process_mib = list(device_mib), list(process_mib)

    def used_mib(self):
        return self.device_mib.pop(0)

    def processes_mib(self, pids):
        return self.process_mib.pop(0)


class FakeCpu:
    def usage_s(self):
        return 0.0

    def pids(self):
        return {1}


def test_sampler_uses_per_process_memory_when_reported():
    gpu = FakeGpu([500.0], [100.0, 2500.0, 3000.0])
    sampler = ResourceSampler(cpu=FakeCpu(), gpu=gpu)
    sampler.start()
    sampler.stop()
    sampler._sample()
    sampler._sample()
    assert sampler.gpu_mode == GPU_MODE_PER_PROCESS
    assert sampler.gpu_mib[-2:] == [2500.0, 3000.0]


def test_sampler_falls_back_to_device_memory_above_baseline():
    gpu = FakeGpu([500.0, 2548.0, 4596.0], [None, None])
    sampler = ResourceSampler(cpu=FakeCpu(), gpu=gpu, interval_s=100)
    sampler.start()  # baseline 500 MiB
    sampler.stop()   # one sample
    sampler._sample()
    assert sampler.gpu_mode == GPU_MODE_DEVICE
    assert sampler.gpu_mib == [2048.0, 4096.0]


def test_official_device_total_reading_has_no_baseline():
    # The official script read the whole device: idle driver memory and other processes count.
    gpu = FakeGpu([500.0, 2548.0], [100.0, 100.0])
    sampler = ResourceSampler(cpu=FakeCpu(), gpu=gpu, interval_s=100, gpu_memory="device_total")
    sampler.start()
    sampler.stop()
    sampler._sample()
    assert sampler.gpu_mode == "device_total"
    assert sampler.gpu_mib == [500.0, 2548.0]


def test_protocol_chooses_the_gpu_memory_reading(tmp_path):
    from flare_eval import load_protocol

    assert load_protocol("flare22").gpu_memory == "container"
    path = tmp_path / "official.json"
    path.write_text('{"extends": "flare22", "resources": {"gpu_memory": "device_total"}}')
    assert load_protocol(path).gpu_memory == "device_total"
    path.write_text('{"extends": "flare22", "resources": {"gpu_memory": "all"}}')
    with pytest.raises(ValueError, match="resources.gpu_memory must be one of"):
        load_protocol(path)


def test_idle_cgroups_left_by_killed_runs_are_removed(tmp_path):
    from flare_eval.harness.sampler import remove_idle_cgroups

    for hierarchy in ("cpuacct", "pids"):
        (tmp_path / hierarchy / "flare-eval" / "dead1" / "container").mkdir(parents=True)
        (tmp_path / hierarchy / "flare-eval" / "dead2").mkdir(parents=True)
        busy = tmp_path / hierarchy / "flare-eval" / "busy"
        busy.mkdir(parents=True)
        (busy / "cgroup.procs").write_text("123\n")  # like a cgroup in use, it cannot be removed
    assert remove_idle_cgroups(root=tmp_path) == 6
    assert sorted(p.name for p in (tmp_path / "cpuacct" / "flare-eval").iterdir()) == ["busy"]
    assert remove_idle_cgroups(root=tmp_path / "absent") == 0
