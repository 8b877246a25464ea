"""The attack corpus: each hostile action runs through the real runner; each test asserts
that the attack failed, that nothing of it survived, and that the next execution works
(the ``then_works`` fixture)."""

import os
import shutil
import socket
import subprocess
import sys
import threading

import psutil
import pytest

from mistral_sandbox import Sandbox
from tests.conftest import (FIXTURES, SHARED_SANDBOXES, Snapshot, claimed_uids, gone,
                            other_threads, pool_pids, readable_by_sandbox_uids,
                            sandbox_strays)

ROOT = os.geteuid() == 0
H = "hostile_actions:"
AUDIT = {}


@pytest.fixture(scope="module", autouse=True)
def audit_baseline(sandbox):
    AUDIT["before"] = Snapshot()
    yield


def nothing_of_it_left(sandbox, out):
    """No process of any finished execution (only the idle pool runs as sandbox uids)."""
    assert sandbox_strays(sandbox) == {}
    assert "pid_ns" in out.isolation["applied"] or out.isolation["survivors_swept"]


def test_fork_bomb(sandbox, then_works):
    """fork() fails at the process limit (which counts the action itself: its uid is its
    own), and none of the children survive the execution."""
    out = sandbox.run("sample_actions:ForkBomb", {"n": 5000}, limits={"procs": 32})
    assert out.exit_reason == "ok", out.message
    if ROOT:
        assert out.result.data == 31
    nothing_of_it_left(sandbox, out)


def test_thread_bomb_counts_against_the_process_limit(sandbox, then_works):
    out = sandbox.run(H + "ThreadBomb", limits={"procs": 16})
    assert out.exit_reason == "ok", out.message
    if ROOT:
        assert out.result.data == 15  # (the main thread is the 16th)


def test_memory_bomb(sandbox, then_works):
    out = sandbox.run("sample_actions:GrowsMemory", limits={"memory": "256MiB"})
    assert out.exit_reason == "memory_limit"
    assert out.message == "MemoryError: the action exceeded its memory limit"
    assert out.usage.max_rss <= 256 * 2 ** 20


def test_sigterm_ignoring_loop(sandbox, then_works):
    """Past its wall time the action is killed with SIGKILL, whatever it does with
    SIGTERM (a runner that only sent SIGTERM would never resolve the future)."""
    fut = sandbox.submit(H + "IgnoresSigterm", limits={"timeout": "500ms"})
    out = fut.result(timeout=60)
    assert out.exit_reason == "timeout" and out.signal == 9
    assert out.message == "the action exceeded its wall-time limit of 0.5s"


def test_setsid_and_setpgid_escapes(sandbox, then_works):
    out = sandbox.run(H + "EscapesProcessGroup")
    assert out.exit_reason == "ok"
    assert len(out.result.data) == 2
    nothing_of_it_left(sandbox, out)


CANARY = "canary-5b1f0c"


@pytest.fixture
def canary_process():
    """A root process with a secret in its environment (where /proc/<pid>/environ shows
    it: the environment it was started with); its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "print(flush=True); input()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={"MS_HOSTILE_CANARY": CANARY})
    try:
        proc.stdout.readline()  # (running: its environment is in place)
        with open("/proc/%d/environ" % proc.pid, "rb") as f:  # (what an attacker wants)
            assert CANARY.encode() in f.read()
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()


def test_host_processes_are_not_visible_in_its_pid_namespace(sandbox, then_works,
                                                             canary_process):
    """In its own pid namespace (and /proc) an action finds no host process to read:
    not the supervisor, the zygote, or any other."""
    pids = [os.getpid(), sandbox.zygote_info["pid"], canary_process]
    out = sandbox.run(H + "ReadsProc", {"pids": pids})
    assert out.exit_reason == "ok", out.message
    assert "pid_ns" in out.isolation["applied"]
    assert out.result.data.pop("visible") == [1]  # itself, as its namespace's init
    assert out.result.data == {"%d/%s" % (pid, what): "denied:ENOENT"
                               for pid in pids for what in ("environ", "mem", "cmdline", "maps")}


def test_reading_host_proc_files_without_a_pid_namespace(no_leaks, canary_process):
    """Without the pid namespace (and the minimal view, which then has no /proc) host
    processes are visible (their cmdline can be read), but their environment and memory
    cannot: the permission layer refuses an unprivileged uid what ptrace would allow."""
    with Sandbox(max_workers=1, warm=0, extra_path=[FIXTURES],
                 isolation={"pid_ns": "off", "mount_ns": "off"}) as sb:
        pids = [os.getpid(), sb.zygote_info["pid"], canary_process, 1]
        out = sb.run(H + "ReadsProc", {"pids": pids})
    assert out.exit_reason == "ok", out.message
    assert "pid_ns" not in out.isolation["applied"]
    data = out.result.data
    assert set(pids) <= set(data.pop("visible"))
    for pid in pids:
        assert data.pop("%d/cmdline" % pid).startswith("ok:"), pid  # visible, readable
        for what in ("environ", "mem", "maps"):
            assert data.pop("%d/%s" % (pid, what)) == "denied:EACCES", (pid, what)
    assert data == {}
    assert CANARY not in repr(out.to_dict()) + out.stdout + out.stderr


def test_ptrace_and_process_vm_readv_on_the_parent(sandbox, then_works):
    out = sandbox.run(H + "Ptraces", {"pid": os.getpid()})
    assert out.exit_reason == "ok"
    assert out.result.data == {"attach": "denied:EPERM", "seize": "denied:EPERM",
                               "process_vm_readv": "denied:EPERM"}


def test_inet_socket_with_network_off(sandbox, then_works):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0)
    port = listener.getsockname()[1]
    try:
        out = sandbox.run(H + "ConnectsInet", {"port": port})
        assert out.exit_reason == "ok"
        assert out.result.data["inet"] == "denied:EPERM"
        assert out.result.data["inet6"] == "denied:EPERM"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_local_sockets_without_network(sandbox, then_works, shared_tmp_path):
    """Without network an action cannot reach a host daemon's unix socket (even a
    world-writable one it can reach), bind an abstract name (its network namespace is
    shared with other children), or open vsock/packet sockets; socketpair still works."""
    readable_by_sandbox_uids(shared_tmp_path, 0o755)
    path = os.path.join(shared_tmp_path, "daemon.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    readable_by_sandbox_uids(path, 0o777)
    listener.listen(1)
    listener.settimeout(0)
    try:
        out = sandbox.run(H + "UsesLocalSockets", {"path": path})
        assert out.exit_reason == "ok", out.message
        data = out.result.data
        for kind in ("unix", "abstract", "vsock", "packet", "udp"):
            assert data[kind] == "denied:EPERM", (kind, data[kind])
        assert data["socketpair"] == "ok:'ping'"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_ipc_objects_and_the_hostname_are_out_of_reach(sandbox, then_works):
    """Children share one ipc and one uts namespace (made by the zygote): no System V
    IPC object or POSIX message queue can be made in it, nor the hostname changed —
    nothing one execution could leave there for another."""
    a = sandbox.run(H + "UsesIPC")
    b = sandbox.run(H + "UsesIPC")
    assert a.exit_reason == "ok", a.message
    data = a.result.data
    for call in ("shmget", "semget", "msgget", "mq_open", "sethostname"):
        assert data[call] == "EPERM", (call, data[call])
    assert data["hostname"] == "sandbox"
    host = {n: os.readlink("/proc/self/ns/" + n) for n in ("net", "ipc", "uts")}
    shared = sandbox.zygote_info["namespaces"]
    for name in ("net", "ipc", "uts"):
        assert data["ns"][name] != host[name], name
        if shared[name] == "shared":
            assert b.result.data["ns"][name] == data["ns"][name], name
    assert shared["net"] != "shared"  # (one per sandbox uid as root, else per child)


def test_writing_outside_the_scratch_directory(sandbox, then_works, shared_tmp_path):
    """Everything but its scratch directory is read-only for an action: even a
    world-writable directory it can reach (so the file system view stops it, not the
    directory's permissions)."""
    readable_by_sandbox_uids(shared_tmp_path, 0o777)
    targets = ["/var/tmp/ms-hostile", "/dev/shm/ms-hostile", os.path.join(shared_tmp_path, "x"),
               os.path.join(sandbox.scratch_root, "x"), "/etc/ms-hostile", "/usr/ms-hostile"]
    # (not the scratch itself: at /var/tmp when the modules lie in /tmp)
    targets = [t for t in targets if not t.startswith(sandbox.scratch_view + "/")]
    out = sandbox.run(H + "WritesOutside", {"paths": targets})
    assert out.exit_reason == "ok", out.message
    assert "mount_ns" in out.isolation["applied"]
    data = out.result.data
    assert data.pop("scratch") == "ok:%r" % os.path.join(sandbox.scratch_view, "mine.txt")
    # read-only where the view has the directory, absent where it does not
    assert set(data) == set(targets)
    assert set(data.values()) <= {"denied:EROFS", "denied:ENOENT"}, data
    assert data["/usr/ms-hostile"] == "denied:EROFS"
    assert [p for p in targets if os.path.exists(p)] == []


def test_reading_another_executions_scratch(sandbox, then_works):
    victim = sandbox.submit(H + "WritesSecretAndWaits",
                            {"secret": "victim-secret-77", "seconds": 1.5})
    # ids are sequential; the victim's scratch is x<its id>, somewhere in 1..2000
    attacker = sandbox.submit(H + "ReadsOtherScratch",
                              {"root": sandbox.scratch_dir, "ids": list(range(1, 2000))})
    out = attacker.result(timeout=60)
    assert victim.result(timeout=60).ok
    assert out.exit_reason == "ok"
    assert out.result.data["found"] == []
    if sandbox.zygote_info["view"] == "minimal":  # the host's scratch root is not in it
        assert out.result.data["listing"] == "denied:ENOENT"
    elif "mount_ns" in out.isolation["applied"]:
        # its own scratch directory is mounted over the directory of all of them
        assert out.result.data["listing"] == "ok:[]"
    else:
        assert out.result.data["listing"].startswith("denied:")


def test_inherited_fd_probing(sandbox, then_works):
    out = sandbox.run(H + "ProbesFds")
    assert out.exit_reason == "ok"
    assert out.result.data == [0, 1, 2, 3]


def test_huge_stderr(sandbox, then_works):
    out = sandbox.run(H + "FloodsStderr")
    assert out.exit_reason == "output_limit" and out.signal == 9
    assert out.message == "the action wrote more than 1048576 bytes to stdout/stderr"
    assert out.stderr_bytes > 2 ** 20 and len(out.stderr) <= 64 * 1024


def test_unserializable_result(sandbox, then_works):
    out = sandbox.run("sample_actions:ReturnsObject")
    assert out.exit_reason == "action_error"
    assert out.message.startswith("the action returned a value that cannot be serialized: "
                                  "result['when'] is a builtins.object, which is not "
                                  "serializable")


def test_deep_recursion(sandbox, then_works):
    out = sandbox.run("sample_actions:Recurses")
    assert out.exit_reason == "action_error"
    assert out.message == "RecursionError: maximum recursion depth exceeded"


def test_interpreter_crash(sandbox, then_works):
    out = sandbox.run(H + "Segfaults")
    assert out.exit_reason == "killed"
    assert out.signal == 11 and out.message == "the action's process was killed by SIGSEGV"


def test_signalling_the_zygote_and_init(sandbox, then_works):
    zpid = sandbox.zygote_info["pid"]
    out = sandbox.run(H + "SignalsZygote")
    assert out.exit_reason == "ok", out.message
    if "pid_ns" in out.isolation["applied"]:
        # the zygote is outside its namespace: no pid to name it by (its parent is
        # "0", so kill(0) hits its own group: itself, the namespace's init, immune to
        # a signal from inside; and pid 1 is itself too)
        assert out.result.data == {"ppid": 0, "kill_parent": "ok:None", "kill_init": "ok:None"}
    else:
        assert out.result.data["kill_parent"] == "denied:EPERM"
        assert out.result.data["kill_init"] == "denied:EPERM"
    assert not gone(zpid)


def test_kill_minus_one_hits_only_itself(sandbox, then_works):
    zpid = sandbox.zygote_info["pid"]
    bystander = sandbox.submit("std.sleep", {"seconds": 1})
    out = sandbox.run(H + "KillsEveryone")
    # kill(-1) reaches only processes of the execution's own uid: in its own pid
    # namespace there is nobody else at all (ESRCH); never the caller or a bystander
    assert "pid_ns" in out.isolation["applied"]
    assert out.exit_reason == "action_error"
    assert out.message == "ProcessLookupError: [Errno 3] No such process"
    assert bystander.result(timeout=30).exit_reason == "ok"
    assert not gone(zpid)


def test_namespace_and_privilege_escapes(sandbox, then_works):
    out = sandbox.run(H + "EscapesNamespaces")
    assert out.exit_reason == "ok"
    data = out.result.data
    for key in ("unshare_user", "unshare_net", "mount_tmpfs", "keyctl", "bpf", "perf_event_open"):
        assert data[key] == "denied:EPERM", (key, data[key])
    assert data["setuid_root"].startswith("denied:")
    assert data["chroot"].startswith("denied:")
    assert data["hostname"] == "sandbox"


@pytest.mark.skipif(not ROOT, reason="making a setuid-root program needs root")
def test_setuid_binary_gives_no_privilege(no_leaks, shared_tmp_path):
    """The minimal view has no setuid program at all; in the host's view (mount_ns off)
    no_new_privs makes a setuid-root program run without its privileges (``id`` prints
    ``euid=0`` when the bit takes effect)."""
    program = os.path.join(shared_tmp_path, "id")
    shutil.copy("/usr/bin/id", program)
    os.chmod(program, 0o4755)
    readable_by_sandbox_uids(shared_tmp_path, 0o755)
    assert os.stat(program).st_mode & 0o4000 and os.stat(program).st_uid == 0  # (premise)
    with Sandbox(max_workers=1, warm=0, extra_path=[FIXTURES],
                 isolation={"mount_ns": "off"}) as sb:
        out = sb.run(H + "ExecsSetuidBinary", {"path": program}, limits={"timeout": "20s"})
        assert out.exit_reason == "ok", out.message + out.stderr
        assert out.result.data["uid"] in claimed_uids(sb)
        assert out.result.data["id"].startswith("uid=%d " % out.result.data["uid"])
        assert "euid=" not in out.result.data["id"], out.result.data["id"]


def test_host_secrets_unreadable(sandbox, then_works):
    out = sandbox.run(H + "ReadsHostSecrets")
    assert out.exit_reason == "ok"
    for path, verdict in out.result.data.items():
        if os.path.exists(path):
            assert verdict.startswith("denied:"), (path, verdict)


def test_filling_the_disk_hits_the_file_size_limit(sandbox, then_works):
    out = sandbox.run(H + "FillsDisk", limits={"file_size": "4MiB"})
    assert out.exit_reason == "ok"
    assert out.result.data == {"written": 4 * 2 ** 20, "error": "EFBIG"}


def test_opening_many_files_hits_the_fd_limit(sandbox, then_works):
    out = sandbox.run(H + "OpensManyFiles", limits={"files": 64})
    assert out.exit_reason == "ok"
    # (it starts with 4 open: stdio and its channel, see test_inherited_fd_probing)
    assert out.result.data == {"error": "EMFILE", "opened": 64 - 4}


def test_concurrent_attacks_do_not_disturb_honest_work(sandbox, clean):
    attacks = [sandbox.submit("sample_actions:ForkBomb", {"n": 500}, limits={"procs": 16}),
               sandbox.submit(H + "KillsEveryone"),
               sandbox.submit(H + "FloodsStderr"),
               sandbox.submit("sample_actions:GrowsMemory", limits={"memory": "128MiB"})]
    honest = [sandbox.submit("std.echo", {"output": i}) for i in range(20)]
    assert [f.result(timeout=60).result.data for f in honest] == list(range(20))
    assert all(f.result(timeout=60).exit_reason != "sandbox_error" for f in attacks)


@pytest.mark.parametrize("variant,message", [
    ("unhashable_type", "unknown message type []"),
    ("other_id", "message for execution 999999 on the channel of %d"),
    ("not_a_map", "message is a list, not a map"),
])
def test_well_formed_nonsense_frames(sandbox, then_works, variant, message):
    """Valid msgpack of a hostile shape ends the execution at once as a protocol error
    (the action then sleeps for an hour: a runner that waited for it would not resolve
    the future within the bound)."""
    fut = sandbox.submit(H + "WritesWellFormedNonsense", {"variant": variant})
    out = fut.result(timeout=60)
    assert out.exit_reason == "protocol_error", out.message
    assert out.message == "the child broke the protocol: " + (
        message % out.execution_id if "%d" in message else message)
    assert out.result is None


def test_zz_leak_audit_after_the_whole_suite(sandbox):
    """Runs last in this module: nothing of any attack remains."""
    AUDIT["before"].assert_clean()
    pool = pool_pids(sandbox)
    assert sandbox_strays(sandbox) == {}
    kids = [p.pid for p in psutil.Process(sandbox.zygote_info["pid"]).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and p.pid not in pool]
    assert kids == []
    # only the idle warm children's (empty) scratch dirs
    left = sorted(os.listdir(sandbox.scratch_dir))
    assert [d for d in left if not d.startswith("w")] == []
    assert len(left) <= len(pool)
    # no thread of any execution: only the I/O thread of each sandbox still open
    assert other_threads() == ["mistral-sandbox-io"] * len(SHARED_SANDBOXES)
    assert threading.current_thread() is threading.main_thread()
