"""How much memory this process may still take: the kernel's ``MemAvailable``, or less where a container's memory
cgroup (v1 or v2) limits the process, as Docker and Kubernetes do.

Used for defaults that must fit the machine (:func:`flare_core.large_arrays.ram_limit`). Pure functions over
the text of ``/proc`` files and a cgroup folder, and one reader that tolerates their absence (not Linux, no cgroup):
None then, and callers keep their fixed default.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

#: a limit at or past this is "no limit" (cgroup v1 writes 2**63 rounded down to a page)
_UNLIMITED = 2**60


def meminfo_available(meminfo: str) -> Optional[int]:
    """Bytes of ``MemAvailable`` in the text of /proc/meminfo; None when it has no such line."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def memory_cgroup_dir(cgroup: str, mounts: str, exists=os.path.isdir) -> Optional[tuple]:
    """``(version, mount, folder)`` of this process's memory cgroup, from the text of /proc/self/cgroup and /proc/mounts.

    A cgroup-v1 ``memory`` hierarchy wins over v2 (a controller is bound to one hierarchy; hybrid systems mount
    both). Without a cgroup namespace the path in /proc/self/cgroup is the host's, while the mount shows the
    container's own group as its root, so the longest tail of the path that exists under the mount is taken."""
    v1 = v2 = None
    for line in mounts.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "cgroup" and "memory" in f[3].split(","):
            v1 = f[1]
        elif len(f) >= 3 and f[2] == "cgroup2" and v2 is None:
            v2 = f[1]
    found = None
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if v1 and "memory" in controllers.split(","):
            found = (1, v1, path)
            break
        if v2 and hierarchy == "0" and controllers == "":
            found = (2, v2, path)
    if found is None:
        return None
    version, mount, path = found
    names = [p for p in path.split("/") if p]
    for start in range(len(names) + 1):
        folder = os.path.join(mount, *names[start:])
        if exists(folder):
            return version, mount, folder
    return None


def _stat(folder: str, key: str) -> Optional[int]:
    try:
        for line in Path(folder, "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _v2_limit(folder: str, mount: str) -> Optional[int]:
    """The lowest ``memory.max`` of the folder and its parents up to the mount (a parent's limit binds too)."""
    lowest = None
    mount = os.path.normpath(mount)
    folder = os.path.normpath(folder)
    while True:
        try:
            text = Path(folder, "memory.max").read_text().strip()
            if text != "max":
                lowest = int(text) if lowest is None else min(lowest, int(text))
        except (OSError, ValueError):
            pass
        if folder == mount or len(folder) <= len(mount):
            return lowest
        folder = os.path.dirname(folder)


def cgroup_headroom(version: int, folder: str, mount: str = "/") -> Optional[int]:
    """Bytes the cgroup in ``folder`` still allows: its limit (v1 ``hierarchical_memory_limit``, which counts
    the parents'; v2 the lowest ``memory.max`` up to ``mount``) less its anonymous memory (v1 ``total_rss``, v2
    ``anon``; page cache is not counted, the kernel drops it first). None when there is no limit."""
    if version == 1:
        limit, used = _stat(folder, "hierarchical_memory_limit"), _stat(folder, "total_rss")
    else:
        limit, used = _v2_limit(folder, mount), _stat(folder, "anon")
    if limit is None or limit >= _UNLIMITED:
        return None
    return max(0, limit - (used or 0))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def memory_available() -> Optional[int]:
    """Bytes this process may still take: the smaller of ``MemAvailable`` and its memory cgroup's headroom; None
    when neither is known."""
    known = []
    free = meminfo_available(_read("/proc/meminfo"))
    if free is not None:
        known.append(free)
    mounts = _read("/proc/mounts")
    group = memory_cgroup_dir(_read("/proc/self/cgroup"), mounts)
    if group is not None:
        version, mount, folder = group
        headroom = cgroup_headroom(version, folder, mount)
        if headroom is not None:
            known.append(headroom)
    return min(known) if known else None
