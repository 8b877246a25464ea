"""The scratch directory: a private tmpfs of ``scratch_size`` bytes per execution (with
the mount_ns step), or a directory under the scratch root (``scratch_size=None``)."""

import os

import pytest

from mistral_sandbox.runner.limits import LimitError
from mistral_sandbox import Sandbox
from mistral_sandbox.runner.settings import DEFAULT_SCRATCH_SIZE
from tests.conftest import FIXTURES

MIB = 1024 ** 2


def _mount_ns(out):
    if "mount_ns" not in out.isolation["applied"]:
        pytest.fail("the mount_ns step did not apply here: %s" % out.isolation["skipped"])


def test_scratch_is_a_private_tmpfs_of_the_configured_size(sandbox, clean):
    out = sandbox.run("sample_actions:ScratchInfo")
    assert out.exit_reason == "ok", out.message
    _mount_ns(out)
    d = out.result.data
    assert d["size"] == DEFAULT_SCRATCH_SIZE and d["inodes"] == DEFAULT_SCRATCH_SIZE // 4096
    assert d["cwd"] == sandbox.scratch_view and d["mode"] == 0o700
    assert d["uid"] == d["my_uid"]  # its own, writable
    assert d["entries"] == ["mine.txt"]  # nothing of any other execution
    # nothing was created on the host for it
    assert [e for e in os.listdir(sandbox.scratch_dir) if not e.startswith("w")] == []
    # the next execution starts empty
    assert sandbox.run("sample_actions:ScratchInfo").result.data["entries"] == ["mine.txt"]


def test_filling_the_scratch_gives_enospc_at_its_size(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES], scratch_size="2MiB") as sb:
        out = sb.run("hostile_actions:FillsDisk")
        assert out.exit_reason == "ok", out.message
        _mount_ns(out)
        assert out.result.data["error"] == "ENOSPC"
        assert out.result.data["written"] <= 2 * MIB
        # as many files as 1 per 4 KiB of scratch: then ENOSPC too (empty files cost
        # the kernel memory the size does not count)
        out = sb.run("sample_actions:ScratchInfo", {"files": 10000})
        d = out.result.data
        assert d["error"] == "ENOSPC" and d["inodes"] == 512
        assert 500 <= d["created"] < 512  # (the root directory and mine.txt take two)
        assert sb.run("std.noop").ok


def test_without_a_size_the_scratch_is_a_directory_under_the_scratch_root(no_leaks):
    with Sandbox(max_workers=1, warm=0, extra_path=[FIXTURES], scratch_size=None,
                 wait_exit=True) as sb:
        out = sb.run("sample_actions:ScratchInfo")
        assert out.exit_reason == "ok", out.message
        d = out.result.data
        assert d["entries"] == ["mine.txt"] and d["mode"] == 0o700
        host = os.statvfs(sb.scratch_root)
        assert d["size"] == host.f_blocks * host.f_frsize  # the scratch root's file system
        assert out.isolation["scratch_removed"] is True
        assert os.listdir(sb.scratch_dir) == []


@pytest.mark.parametrize("size,match", [
    ("lots", "scratch_size: expected a size like 256MiB"),
    (-1, "scratch_size: must not be negative"),
    ("1KiB", "scratch_size: at least 65536 bytes"),
])
def test_a_bad_scratch_size_is_refused_before_anything_starts(size, match):
    with pytest.raises(LimitError, match=match):
        Sandbox(scratch_size=size)
