import platform
import re
from pathlib import Path

import pytest
import torch

from graphprune.heap import release_freed_memory


def _rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_small_tensors_go_back_to_the_system():
    """What tracing leaves: many small tensors freed below a survivor; glibc keeps their memory until trimmed."""
    release_freed_memory()
    chunks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each, under the mmap threshold: in the heap
    survivor = torch.ones(16)  # allocated last, so freeing the rest does not shrink the heap's top
    del chunks
    held = _rss_kib()
    release_freed_memory()
    assert held - _rss_kib() > 150 * 1024  # of the 250 MiB freed
    assert survivor.sum().item() == 16
