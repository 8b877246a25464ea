"""The file system a child sees: a minimal root, built once by the zygote.

As root, the zygote builds a *template* mount namespace per network setting (see
:func:`build`): a small read-only tmpfs root holding only what actions need — the
directories of the interpreter's module path (standard library, site-packages,
action packages), the shared libraries and the loader's cache, time zones, a few
devices (``null``, ``zero``, ``full``, ``random``, ``urandom``), an empty ``/proc``
and ``/tmp``; with network also the files of name resolution and the CA
certificates. Nothing else of the host is in it: no ``/etc`` beyond those, no other
checkout, no ``/dev/ptmx``. Each child joins the template and unshares a private copy
of it (:func:`~mistral_sandbox.runner.isolation.prepare`: the ``mount_ns`` step), mounts
its own ``/proc`` and its scratch tmpfs on ``/tmp``: two mounts instead of a copy of the
host's whole mount table made read-only.

Bind mounts keep the host's ownership and modes, but the directories leading to them
are the template's own (0755): a Python installed under a 0700 home directory is
importable by sandbox uids without changing anything on the host.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Dict, Iterable, List, Tuple

from mistral_sandbox.runner import linux

# where a child sees its scratch directory (also HOME and TMPDIR): /tmp, unless a module
# directory lies below it (the scratch mount would hide it)
SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/scratch")
LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64")
FILES = ("/etc/ld.so.cache", "/etc/localtime")
SHARED_DIRS = ("/usr/share/zoneinfo",)
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf",
                 "/etc/gai.conf", "/etc/services", "/etc/protocols")
NETWORK_DIRS = ("/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates",
                "/etc/pki")
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
# pivot_root has no libc wrapper everywhere; its number differs between architectures
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}


class ViewUnavailable(Exception):
    """The template cannot be built on this host (the reason is the message)."""


def _existing_dirs(paths: Iterable[str]) -> List[str]:
    """Real paths of the existing directories among ``paths``, without those inside
    another one of them."""
    dirs = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    kept: List[str] = []
    for d in dirs:
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


def _inside(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def interpreter(executable: str = sys.executable,
                prefix: str = sys.prefix) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The interpreter, so that an action can start Python (``subprocess``,
    ``multiprocessing``): ``(files, links)``: the executable's symbolic links as they
    are, the file they lead to, and a virtual environment's ``pyvenv.cfg`` (without it,
    the interpreter would not see the environment's packages)."""
    files, links, path = [], [], os.path.abspath(executable)
    for _ in range(40):  # (the kernel's own limit on a chain of links)
        if not os.path.islink(path):
            break
        target = os.readlink(path)
        links.append((path, target))
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    files.append(path)
    files.append(os.path.join(prefix, "pyvenv.cfg"))
    return files, links


def plan(module_path: Iterable[str], network: bool) -> Dict[str, List[str]]:
    """What the template of this network setting holds: ``dirs`` and ``files`` bound
    from the host at their real paths, ``links`` (path, target) kept as symbolic
    links. Files and links inside a bound directory are there already (and must not
    be touched: the bind is the host's directory)."""
    dirs = list(module_path) + list(LIBRARY_DIRS) + list(SHARED_DIRS)
    files, links = interpreter()
    files += FILES
    if network:
        dirs += NETWORK_DIRS
        files += NETWORK_FILES
    links += [(p, os.readlink(p)) for p in LIBRARY_DIRS if os.path.islink(p)]
    bound = _existing_dirs(p for p in dirs if not os.path.islink(p))
    files = [p for p in files if os.path.isfile(p) and not _inside(p, bound)]
    links = [(p, t) for p, t in links if not _inside(p, bound)]
    return {"dirs": bound, "files": sorted(set(files)), "links": links,
            "scratch": scratch_path(bound)}


def scratch_path(bound_dirs: Iterable[str]) -> str:
    """The first of :data:`SCRATCH_CANDIDATES` with no bound directory below it."""
    bound = list(bound_dirs)
    for candidate in SCRATCH_CANDIDATES:
        if not any(d == candidate or d.startswith(candidate + "/") for d in bound):
            return candidate
    raise ViewUnavailable("every scratch path (%s) holds a module directory"
                          % ", ".join(SCRATCH_CANDIDATES))


def unreadable(bound_dirs: Iterable[str]) -> List[str]:
    """Bound directories a sandbox uid cannot list and enter (their own mode lacks o+rx:
    the view cannot fix that)."""
    return [d for d in bound_dirs if os.stat(d).st_mode & 0o005 != 0o005]


def _mkdirs(root: str, path: str) -> str:
    target = root + path
    os.makedirs(target, mode=0o755, exist_ok=True)
    return target


def _bind(source: str, target: str) -> None:
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)


def _populate(root: str, layout: Dict[str, List[str]]) -> None:
    no_devices = linux.MOUNT_ATTR_NODEV  # (the devices below are bound without it)
    for source in layout["dirs"]:
        target = _mkdirs(root, source)
        _bind(source, target)
        linux.mount_setattr(target, linux.AT_RECURSIVE, no_devices, 0)
    for source in layout["files"]:
        _mkdirs(root, os.path.dirname(source))
        target = root + source
        open(target, "w").close()
        _bind(os.path.realpath(source), target)
        linux.mount_setattr(target, 0, no_devices, 0)
    for path, target in layout["links"]:
        if not os.path.lexists(root + path):  # (two chains may share a link)
            _mkdirs(root, os.path.dirname(path))
            os.symlink(target, root + path)
    dev = _mkdirs(root, "/dev")
    for name in DEVICES:
        open(os.path.join(dev, name), "w").close()
        _bind("/dev/" + name, os.path.join(dev, name))
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    for path in ("/proc", layout["scratch"]):
        _mkdirs(root, path)


def _pivot(root: str) -> None:
    """Make ``root`` this mount namespace's root and drop everything else."""
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise ViewUnavailable("no pivot_root number known for %s" % platform.machine())
    old = os.path.join(root, ".old-root")
    os.mkdir(old, 0o700)
    libc = ctypes.CDLL(None, use_errno=True)
    linux.check(libc.syscall(ctypes.c_long(number), root.encode(), old.encode()),
                "pivot_root")
    os.chdir("/")
    linux.umount("/.old-root")
    os.rmdir("/.old-root")
    # (not nodev: the devices are bind mounts of the host's nodes)
    linux.mount_setattr("/", linux.AT_RECURSIVE,
                        linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID, 0)


def _build_in_child(staging: str, layout, report_fd: int, wait_fd: int) -> None:
    try:
        os.umask(0o022)  # (the zygote's is 077: the view's own directories are 0755)
        linux.unshare(linux.CLONE_NEWNS, "mnt")
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.mount("tmpfs", staging, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                    b"mode=0755,size=1m,nr_inodes=4096")
        _populate(staging, layout)
        _pivot(staging)
        os.write(report_fd, b"ok")
        os.read(wait_fd, 1)  # until the zygote has opened our namespace
    except BaseException as exc:  # reported to the zygote, which keeps the host view
        try:
            os.write(report_fd, ("%s: %s" % (type(exc).__name__, exc)).encode()[:400])
        except OSError:
            pass
    finally:
        os._exit(0)


def build(staging: str, layout: Dict[str, List[str]]) -> int:
    """A template mount namespace holding ``layout`` (:func:`plan`); an fd to it.
    ``staging``: an existing directory its root is mounted on while it is built (in
    the builder's own namespace: the host does not see it). Raises ViewUnavailable."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    wait_r, wait_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(wait_w)
        _build_in_child(staging, layout, report_w, wait_r)
    os.close(report_w)
    os.close(wait_r)
    try:
        answer = os.read(report_r, 512)
        if answer != b"ok":
            raise ViewUnavailable(answer.decode(errors="replace") or "the builder died")
        return os.open("/proc/%d/ns/mnt" % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(report_r)
        os.close(wait_w)  # the builder exits
        os.waitpid(pid, 0)


def build_all(staging: str, module_path: Iterable[str]) -> Tuple[Dict[bool, int], str]:
    """Templates for both network settings (the same scratch path in both): ({network:
    fd}, the scratch path), or raises ViewUnavailable."""
    module_path = list(module_path)
    fds: Dict[bool, int] = {}
    try:
        layouts = {network: plan(module_path, network) for network in (False, True)}
        scratch = scratch_path(layouts[True]["dirs"])
        for network, layout in layouts.items():
            layout["scratch"] = scratch
            fds[network] = build(staging, layout)
    except (ViewUnavailable, OSError) as exc:
        for fd in fds.values():
            os.close(fd)
        raise ViewUnavailable(str(exc)) from None
    return fds, scratch


def module_path() -> List[str]:
    """The directories modules are imported from (the zygote's ``sys.path``), but for
    the directory that holds this package when it is not a site-packages directory (a
    checkout, put on the path by the zygote's bootstrap): only the package itself, not
    the checkout's ``.git``, configuration files and virtual environment."""
    import site
    import mistral_sandbox
    package = os.path.dirname(os.path.realpath(mistral_sandbox.__file__))
    parent = os.path.dirname(package)
    sites = {os.path.realpath(p) for p in site.getsitepackages()}
    out = []
    for p in sys.path:
        if p and os.path.realpath(p) == parent and parent not in sites:
            p = package
        if p and p not in out:
            out.append(p)
    return out
