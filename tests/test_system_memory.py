"""How much memory the process may still take: MemAvailable, or a container's memory cgroup (v1 or v2); and the
default limit on images held in memory that follows from it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flare_core import large_arrays
from flare_core.system_memory import cgroup_headroom, meminfo_available, memory_available, memory_cgroup_dir

HYBRID_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
HYBRID_CGROUP = "4:memory:/host/box\n1:cpu:/\n0::/\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"


def test_memavailable_is_read_in_bytes():
    assert meminfo_available("MemTotal:  100 kB\nMemFree: 10 kB\nMemAvailable:  2048 kB\n") == 2048 * 1024
    assert meminfo_available("MemTotal:  100 kB\n") is None


def test_the_v1_memory_hierarchy_wins_on_a_hybrid_system():
    # without a cgroup namespace the host's path is shown; the container's own group is the mount's root
    assert memory_cgroup_dir(HYBRID_CGROUP, HYBRID_MOUNTS, exists=lambda p: p == "/sys/fs/cgroup/memory") == (
        1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory")
    seen = {"/sys/fs/cgroup/memory/box"}
    assert memory_cgroup_dir(HYBRID_CGROUP, HYBRID_MOUNTS, exists=seen.__contains__)[2] == "/sys/fs/cgroup/memory/box"
    seen = {"/sys/fs/cgroup/memory/host/box", "/sys/fs/cgroup/memory/box"}  # the longest tail that exists
    assert memory_cgroup_dir(HYBRID_CGROUP, HYBRID_MOUNTS, exists=seen.__contains__)[2] == "/sys/fs/cgroup/memory/host/box"


def test_a_v2_only_system_and_one_without_cgroups():
    assert memory_cgroup_dir("0::/user.slice/app\n", V2_MOUNTS, exists=lambda p: True) == (
        2, "/sys/fs/cgroup", "/sys/fs/cgroup/user.slice/app")
    assert memory_cgroup_dir("", V2_MOUNTS) is None
    assert memory_cgroup_dir("0::/\n", "proc /proc proc rw 0 0\n") is None


def test_v1_headroom_is_the_hierarchical_limit_less_the_groups_anonymous_memory(tmp_path):
    (tmp_path / "memory.stat").write_text("cache 500\nrss 10\nhierarchical_memory_limit 1000\ntotal_cache 700\n"
                                          "total_rss 300\n")
    assert cgroup_headroom(1, str(tmp_path)) == 700  # page cache is not counted: the kernel drops it first
    (tmp_path / "memory.stat").write_text("hierarchical_memory_limit 9223372036854771712\ntotal_rss 300\n")
    assert cgroup_headroom(1, str(tmp_path)) is None  # no limit


def test_v2_headroom_takes_the_lowest_limit_up_to_the_mount(tmp_path):
    child = tmp_path / "a" / "b"
    child.mkdir(parents=True)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "a" / "memory.max").write_text("4000\n")
    (child / "memory.max").write_text("max\n")
    (child / "memory.stat").write_text("anon 1000\nfile 9999\n")
    assert cgroup_headroom(2, str(child), str(tmp_path)) == 3000  # the parent's limit binds the child
    (tmp_path / "a" / "memory.max").write_text("max\n")
    assert cgroup_headroom(2, str(child), str(tmp_path)) is None


def test_the_default_image_limit_follows_the_memory_available(monkeypatch):
    monkeypatch.delenv("FLARE_IMAGE_RAM_MB", raising=False)
    monkeypatch.setattr(large_arrays, "memory_available", lambda: 2**30)  # a 1 GB container
    assert large_arrays.ram_limit() == 2**30 // 4
    monkeypatch.setattr(large_arrays, "memory_available", lambda: 64 * 2**30)
    assert large_arrays.ram_limit() == large_arrays.RAM_LIMIT_MB * 2**20  # a large machine: the fixed cap
    monkeypatch.setattr(large_arrays, "memory_available", lambda: None)  # not Linux
    assert large_arrays.ram_limit() == large_arrays.RAM_LIMIT_MB * 2**20
    monkeypatch.setattr(large_arrays, "memory_available", lambda: 2**30)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "700")
    assert large_arrays.ram_limit() == 700 * 2**20  # the variable, when set, is the limit


def test_this_machine_reports_some_memory():
    available = memory_available()
    assert available is None or 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


GROUPS = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(not os.access(GROUPS / "cgroup.procs", os.W_OK), reason="needs a writable cgroup-v1 memory controller (root)")
def test_a_process_in_a_limited_memory_group_sees_the_limit(tmp_path):
    group = GROUPS / f"flare-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(600 * 2**20))
        code = "from flare_core.system_memory import memory_available; print(memory_available())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        assert 0 < int(out.stdout) <= 600 * 2**20
    finally:
        group.rmdir()
