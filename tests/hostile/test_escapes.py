"""The attacks that got through the first isolation (each performed for real, as a
tenant would): io_uring sockets, outliving the wall time, limits per process instead
of per execution, channels between two executions, the host's file system, ptys, the
memlock limit and the tenant's log levels."""

import dataclasses
import logging
import os
import socket
import threading

import pytest

from mistral_sandbox import Sandbox
from mistral_sandbox.runner.limits import DEFAULT_CEILING
from tests.conftest import (FIXTURES, claimed_uids, processes_as, readable_by_sandbox_uids,
                            wait_for)

ROOT = os.geteuid() == 0
E = "escape_actions:"


def test_io_uring_cannot_make_a_socket(sandbox, then_works, shared_tmp_path):
    """IORING_OP_SOCKET is a socket() that seccomp never sees: io_uring is refused."""
    readable_by_sandbox_uids(shared_tmp_path, 0o755)
    path = os.path.join(shared_tmp_path, "daemon.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    readable_by_sandbox_uids(path, 0o777)
    listener.listen(1)
    listener.settimeout(0)
    try:
        out = sandbox.run(E + "UsesIoUring", {"path": path})
        assert out.exit_reason == "ok", out.message
        for family in ("unix", "inet", "inet6", "netlink", "vsock", "connect"):
            assert out.result.data[family].startswith("denied:"), out.result.data
        assert {v for k, v in out.result.data.items()} <= {"denied:EPERM", "denied:ENOENT"}
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_an_action_cannot_outlive_its_reply(no_leaks):
    """An action that leaves a trap for the runner's exit path (a sys.stdout whose
    flush() never returns once the reply is sent) must not keep its process, uid and
    worker: the next execution runs, and shutdown returns."""
    sb = Sandbox(max_workers=1, extra_path=[FIXTURES])
    try:
        out = sb.run(E + "OutlivesItsReply", limits={"timeout": "2s"})
        assert out.exit_reason == "ok" and out.result.data == "returned"
        assert sb.submit("std.echo", {"output": "next"}).result(timeout=60).result.data == \
            "next"
    finally:
        done = threading.Thread(target=sb.shutdown)
        done.start()
        done.join(timeout=120)
    assert not done.is_alive(), "shutdown(wait=True) did not return"


def test_a_delivered_execution_is_killed_if_it_does_not_exit(no_leaks):
    """An action that sends a reply of its own, closes everything the parent waits for
    and keeps running: its outcome is delivered, but its process does not keep the
    worker: it is killed a few seconds later and the next execution runs."""
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        out = sb.run(E + "ForgesItsReplyAndStays", limits={"timeout": "600s"})
        assert out.exit_reason == "ok" and out.result.data == "forged"
        nxt = sb.submit("std.echo", {"output": "next"}).result(timeout=60)
        assert nxt.result.data == "next"
        assert sb.status()["killed_after_reply"] == 1


def _tree_limits_sandbox():
    return Sandbox(max_workers=1, extra_path=[FIXTURES], wait_exit=True)


def test_the_memory_limit_holds_for_the_whole_execution(no_leaks):
    """4 processes x 200 MiB under memory=256MiB: the execution as a whole is over its
    limit (rlimits alone are per process and let it hold 800 MiB)."""
    with _tree_limits_sandbox() as sb:
        out = sb.run(E + "ForksMemoryHogs", {"n": 4, "mb": 200},
                     limits={"memory": "256MiB", "timeout": "60s"})
        assert out.exit_reason == "memory_limit", (out.exit_reason, out.message, out.result)
        if "cgroup" in out.isolation["applied"]:
            assert out.usage.max_rss <= 256 * 2 ** 20 + 16 * 2 ** 20


def test_the_cpu_limit_holds_for_the_whole_execution(no_leaks):
    """4 processes that ignore SIGXCPU, spinning, under cpu=2s: the execution is stopped
    once the whole tree used its 2 s (per-process rlimits let it use about 4 x 3 s)."""
    with _tree_limits_sandbox() as sb:
        out = sb.run(E + "ForksCpuSpinners", {"n": 4, "seconds": 8},
                     limits={"cpu": "2s", "timeout": "60s"})
        assert out.exit_reason == "cpu_limit", (out.exit_reason, out.message, out.result)
        assert out.usage.cpu_user + out.usage.cpu_sys < 4.0, out.usage


def test_two_executions_cannot_talk_through_abstract_unix_names(sandbox, then_works):
    name = "ms-escape-%d" % os.getpid()
    listener = sandbox.submit(E + "ListensAbstract", {"name": name, "seconds": 5})
    sender = sandbox.submit(E + "SendsAbstract", {"name": name, "tries": 30})
    got, sent = listener.result(timeout=60), sender.result(timeout=60)
    assert got.exit_reason == "ok" and sent.exit_reason == "ok", (got.message, sent.message)
    assert got.result.data["bind"].startswith("denied:") or \
        got.result.data["received"].startswith("none:"), got.result.data
    assert sent.result.data.startswith("denied:"), sent.result.data


def test_netlink_is_refused_without_network(sandbox, then_works):
    """NETLINK_USERSOCK reached another execution, NETLINK_SOCK_DIAG listed its
    sockets: no netlink socket at all without network."""
    out = sandbox.run(E + "UsesNetlink")
    assert out.exit_reason == "ok", out.message
    assert out.result.data == {"usersock": "denied:EPERM", "sock_diag": "denied:EPERM",
                               "route": "denied:EPERM"}


def test_the_host_file_system_is_out_of_sight(sandbox, then_works, shared_tmp_path):
    """World-readable files of the host (a config file left 0644, /etc) are not in the
    action's view, and its /proc/1/cmdline says nothing of the configuration."""
    readable_by_sandbox_uids(shared_tmp_path, 0o755)
    planted = os.path.join(shared_tmp_path, "mistral.conf")
    with open(planted, "w") as f:
        f.write("transport_url = rabbit://secret@host/\n")
    readable_by_sandbox_uids(planted, 0o644)
    out = sandbox.run(E + "ReadsHostFiles", {"paths": [planted, "/etc/passwd",
                                                       "/etc/hostname"]})
    assert out.exit_reason == "ok", out.message
    data = out.result.data
    for path in (planted, "/etc/passwd", "/etc/hostname"):
        assert data[path] == "denied:ENOENT", (path, data[path])
    # of /etc only what the dynamic loader and time zones need (no name resolution:
    # no network)
    assert set(data["etc"]) <= {"ld.so.cache", "localtime"}, data["etc"]
    for secret in ("uid_lock_dir", "scratch_root", "ceiling", "policy"):
        assert secret not in data["cmdline"], data["cmdline"]


def test_ptys_are_out_of_reach(sandbox, then_works):
    """/dev/ptmx of the host's devpts let three processes hold 750 of the host's 4096
    ptys: an execution gets none."""
    out = sandbox.run(E + "OpensPtys", {"n": 64})
    assert out.exit_reason == "ok", out.message
    assert out.result.data["opened"] == 0 and out.result.data["error"] in ("ENOENT", "EPERM")


def test_memlock_is_small_and_tenant_log_levels_are_capped(sandbox, then_works, caplog):
    with caplog.at_level(logging.DEBUG, logger="mistral_sandbox.action"):
        out = sandbox.run(E + "ReportsLimits")
    assert out.exit_reason == "ok", out.message
    assert out.result.data["memlock"][1] <= DEFAULT_CEILING.memory_locked <= 64 * 1024
    records = [r for r in caplog.records if "tenant record at CRITICAL" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].name == "mistral_sandbox.action"
    assert "escape_actions:ReportsLimits] tenant record at CRITICAL" in records[0].getMessage()
    assert [e["level"] for e in out.logs if "tenant record" in e["msg"]] == [logging.CRITICAL]
    assert "1 log record above WARNING logged at WARNING on the host" in out.notes


@pytest.mark.skipif(not ROOT, reason="sandbox uids exist as root only")
def test_a_package_under_a_private_directory_is_importable(no_leaks, tmp_path):
    """pytest's tmp_path is under a 0700 directory: sandbox uids could import nothing
    from there that the zygote did not preload. The view makes it readable without
    changing anything on the host."""
    pack = tmp_path / "private_pack"
    pack.mkdir()
    (pack / "private_action.py").write_text(
        "from mistral_sandbox.api import Action\n"
        "class Hello(Action):\n"
        "    def run(self, context):\n"
        "        return 'hello from a 0700 home'\n")
    mode = os.stat(tmp_path.parent).st_mode & 0o777
    assert not mode & 0o001  # (the premise: others cannot traverse it)
    with Sandbox(max_workers=1, extra_path=[str(pack)]) as sb:
        out = sb.run("private_action:Hello")
    assert out.exit_reason == "ok", out.message
    assert out.result.data == "hello from a 0700 home"
    assert os.stat(tmp_path.parent).st_mode & 0o777 == mode


def test_a_log_flood_does_not_stall_the_other_executions_or_the_deadlines(no_leaks):
    """A child writing log records without pause (no log cap: the operator's choice)
    kept the parent's I/O thread reading: its wall time was never enforced and a
    neighbour's std.noop waited 9 s. The neighbour now finishes while the flood runs,
    and the flood ends at its wall time."""
    ceiling = dataclasses.replace(DEFAULT_CEILING, max_log_bytes=None)
    with Sandbox(max_workers=2, extra_path=[FIXTURES], ceiling=ceiling) as sb:
        flood = sb.submit(E + "FloodsItsChannel", {"seconds": 60}, limits={"timeout": "3s"})
        neighbour = sb.submit("std.echo", {"output": "neighbour"})
        assert neighbour.result(timeout=120).result.data == "neighbour"
        assert not flood.done(), "the neighbour was held up until the flood ended"
        out = flood.result(timeout=120)
    assert out.exit_reason == "timeout", (out.exit_reason, out.message)


def test_a_log_flood_past_its_cap_ends_the_execution(no_leaks):
    with Sandbox(max_workers=1, extra_path=[FIXTURES]) as sb:
        out = sb.run(E + "FloodsItsChannel", {"seconds": 60}, limits={"timeout": "60s"})
    assert out.exit_reason == "output_limit", (out.exit_reason, out.message)
    assert "bytes of log records" in out.message


def test_logger_names_count_against_the_log_cap(sandbox, then_works):
    """Records with an empty message and a 1 MiB logger name were all kept (only the
    message was counted): 3,000 of them took the supervisor to 3.1 GB."""
    out = sandbox.run(E + "LogsHugeLoggerNames", {"frames": 64, "kib": 1024},
                      limits={"timeout": "60s"})
    assert out.exit_reason == "output_limit", (out.exit_reason, out.message)
    assert len(out.logs) <= 1
    assert all(len(r["logger"]) <= 200 for r in out.logs)


def test_a_tenant_cannot_forge_lines_in_the_host_log(sandbox, then_works, caplog):
    with caplog.at_level(logging.DEBUG, logger="mistral_sandbox.action"):
        out = sandbox.run(E + "ForgesHostLogLines")
    assert out.exit_reason == "ok", out.message
    [record] = [r for r in caplog.records if "harmless" in r.getMessage()]
    text = record.getMessage()
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "harmless\\nCRITICAL:" in text
    assert [r["msg"] for r in out.logs if "harmless" in r["msg"]][0].startswith("harmless\n")


def test_a_dense_result_frame_is_refused_by_the_parent(sandbox, then_works):
    """A million empty lists fit in a 1 MiB result frame and cost the parent ~60 MB to
    decode (16 million: 2.3 GB and 14 s of its I/O thread)."""
    out = sandbox.run(E + "SendsDenseResult", {"n": 1000000})
    assert out.exit_reason == "protocol_error", (out.exit_reason, out.message)
    assert "lists and maps" in out.message and out.result is None


def test_an_honest_dense_result_ends_in_output_limit(sandbox, then_works):
    out = sandbox.run(E + "ReturnsDenseResult", {"n": 1000000})
    assert out.exit_reason == "output_limit", (out.exit_reason, out.message)
    assert "lists and maps" in out.message


@pytest.mark.skipif(not ROOT, reason="sandbox uids (and their namespaces) exist as root only")
def test_an_execution_cannot_see_anothers_sockets(no_leaks):
    """/proc/net lists the sockets of the network namespace: in a namespace shared by
    every execution, one read another's socket pairs (a count sent 'hello' from one to
    the other at 16 bytes/s). Each sandbox uid now has a namespace of its own."""
    with Sandbox(max_workers=2, extra_path=[FIXTURES]) as sb:
        holder = sb.submit(E + "HoldsSocketPairs", {"n": 40, "seconds": 120},
                           limits={"timeout": "150s"})

        def holding():  # (seen from the host: the holder's namespace has its 80 sockets)
            for p in processes_as(claimed_uids(sb)):
                try:
                    with open("/proc/%d/net/unix" % p.pid) as f:
                        if len(f.read().splitlines()) > 80:
                            return True
                except OSError:
                    pass
            return False
        assert wait_for(holding, timeout=60)
        spy = sb.run(E + "CountsUnixSockets")
        assert not holder.done()
        sb.cancel(holder)
    assert spy.exit_reason == "ok", spy.message
    assert spy.result.data["listed"] < 40 and spy.result.data["used"] < 40, spy.result.data


def test_an_execution_cannot_watch_the_files_others_read(sandbox, then_works):
    """inotify on the view's shared, read-only files showed which modules another
    execution imported."""
    out = sandbox.run(E + "WatchesSharedFiles")
    assert out.exit_reason == "ok", out.message
    assert out.result.data == "denied:EPERM"


@pytest.mark.skipif(not ROOT, reason="the minimal view is built as root only")
def test_the_checkout_holding_the_package_is_out_of_sight(sandbox, then_works):
    """Run from a source tree, the zygote puts the checkout on its module path, and the
    view bound all of it: .git, configuration files, the virtual environment."""
    import site
    import mistral_sandbox
    parent = os.path.dirname(os.path.dirname(os.path.realpath(mistral_sandbox.__file__)))
    out = sandbox.run(E + "ListsThePackagesParent")
    assert out.exit_reason == "ok", out.message
    assert out.result.data["parent"] == parent
    if parent not in {os.path.realpath(p) for p in site.getsitepackages()}:
        # only the package and the directories leading to other bound ones (the
        # virtual environment's site-packages, the tests' fixtures): no file of it
        listing = set(out.result.data["listing"])
        assert "mistral_sandbox" in listing
        assert not listing & {".git", "setup.cfg", "README.md", "docs", "build"}, listing
        assert out.result.data["git"] == "denied:ENOENT"


@pytest.mark.skipif(not ROOT, reason="a private /proc needs a pid namespace (root)")
def test_proc_shows_processes_only(sandbox, then_works):
    """The host-wide files of /proc told an action about the host (which uids hold
    keys, its kernel configuration, its memory and load: a side channel on the
    neighbours)."""
    out = sandbox.run(E + "ReadsHostWideProcFiles")
    assert out.exit_reason == "ok", out.message
    assert set(out.result.data.values()) == {"denied:ENOENT"}, out.result.data
