"""The monitor measures real work: CPU of a spinning thread, memory of a subprocess tree, I/O of
a writing tool, and the system as a whole."""

from __future__ import annotations

import os

from conftest import WAIT

from llmunix import Kernel, ProcessContext


def test_a_spinning_tool_shows_cpu_above_half_a_core(make_kernel, wait_until):
    k = make_kernel(monitor=True, monitor_interval=0.1)
    pid = k.spawn("spin", seconds=20)
    wait_until(lambda: any((s.cpu_percent or 0) > 50 for s in k.samples(pid)), message="CPU above 50%")
    assert k.info(pid).resources.cpu_percent is not None
    assert k.info(pid).resources.memory_mb is None  # a thread's memory is not attributed
    k.kill(pid, force=True)


def test_a_subprocess_that_allocates_200_mb_shows_about_200_mb(make_kernel, wait_until):
    k = make_kernel(monitor=True, monitor_interval=0.1)
    code = "import sys,time; x=bytearray(200*1024*1024); print('ready', flush=True); time.sleep(30)"
    pid = k.spawn("shell", cmd=f"python3 -c \"{code}\"")
    wait_until(lambda: any(line == "ready" for _t, line in k.logs(pid)), message="the allocation")
    wait_until(lambda: any(s.memory_mb and s.memory_mb > 200 for s in k.samples(pid)), message="~200 MB")
    mb = max(s.memory_mb or 0 for s in k.samples(pid))
    assert 200 <= mb <= 260, mb  # 200 MiB = 210 MB, plus the interpreter
    k.kill(pid)


def test_io_operations_rise_for_a_tool_that_writes(make_kernel, wait_until, tmp_path):
    def writer(ctx: ProcessContext) -> None:
        fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 100)
                ctx.sleep(0.001)
        finally:
            os.close(fd)

    k = make_kernel(monitor=True, monitor_interval=0.1)
    pid = k.spawn(writer)
    wait_until(lambda: len([s for s in k.samples(pid) if s.io_operations]) >= 2, message="two I/O samples")
    counts = [s.io_operations for s in k.samples(pid) if s.io_operations]
    assert counts[-1] > counts[0] > 0
    k.kill(pid)


def test_the_system_is_sampled_and_the_interval_can_change(make_kernel, wait_until):
    k: Kernel = make_kernel(monitor=True, monitor_interval=5.0)
    k.monitor_interval = 0.05  # takes effect at once, not after the old 5 s
    wait_until(lambda: k.system(), timeout=WAIT, message="a system sample")
    s = k.system()[-1]
    assert s.cpu_count >= 1 and 0 < s.memory_available_mb <= s.memory_total_mb
    assert s.llmunix_memory_mb > 0


def test_a_kernel_without_a_monitor_has_no_samples(make_kernel):
    k = make_kernel(monitor=False)
    pid = k.spawn("echo", text="x")
    k.wait([pid], timeout=WAIT)
    assert k.samples(pid) == [] and k.system() == [] and k.monitor_interval is None
