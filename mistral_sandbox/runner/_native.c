/* Native isolation of a sandbox child: the steps of isolation.prepare() in one call.
 *
 * Optional: built when a C compiler is at hand at install time; without it the
 * Python steps (mistral_sandbox/runner/isolation.py) do the same. Only the common
 * configuration takes this path (root, every step enabled, namespaces shared by the
 * zygote, a tmpfs scratch, no network; see native_plan.py), and the zygote first runs
 * it once in a probe child, so a host that refuses a step keeps the Python path.
 *
 * Why: in a forked Python child every object the Python steps touch is a
 * copy-on-write page fault; here the same system calls touch a few pages of C stack.
 *
 * prepare(*, channel, stdout, stderr, net_ns_fd, ipc_ns_fd, uts_ns_fd, mount_ns_fd,
 *         cgroup_fds, scratch_view, tmpfs_options, uid, seccomp_filter, expected_parent,
 *         in_pid_ns, rlimits)
 *   -> (failed_step_index or -1, errno, what_failed, (microseconds per step, ...))
 *
 * Steps, in order (STEP_NAMES, which must be steps.NATIVE_ORDER): fds, cgroup (writes "0"
 * to each of ``cgroup_fds``, packed native ints: the uid's cgroup.procs files), session, net_ns,
 * mount_ns, ipc_ns, uts_ns, no_new_privs, seccomp, uid, pdeathsig, rlimits. mount_ns
 * joins the template view (view.py) when ``mount_ns_fd`` is one, else makes the host's
 * mounts read-only. ``rlimits``
 * is packed (int resource, uint64 soft, uint64 hard) entries; what_failed is then the
 * failing entry's index. A failure stops at once (the caller turns it into the step's
 * IsolationError); the child never runs an action after one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PR_SET_NO_NEW_PRIVS
#define PR_SET_NO_NEW_PRIVS 38
#endif
#ifndef PR_SET_SECCOMP
#define PR_SET_SECCOMP 22
#endif
#define SECCOMP_MODE_FILTER_ 2
#define MOUNT_ATTR_RDONLY_ 0x1
#define CHANNEL_FD 3

enum { S_FDS, S_CGROUP, S_SESSION, S_NET, S_MOUNT, S_IPC, S_UTS, S_NNP, S_SECCOMP, S_UID,
       S_PDEATHSIG, S_RLIMITS, S_COUNT };
#define MAX_CGROUP_FDS 4

struct mount_attr_ {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static long long
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* an fd above the channel's number (the dup2s to 0-3 must not clobber it) */
static int
above_channel(int fd)
{
    return fd > CHANNEL_FD ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 10);
}

/* /proc of the pid namespace with its processes only (subset=pid, Linux 5.8; the full
 * one on older kernels): as isolation.mount_proc */
static int
mount_proc(void)
{
    unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (mount("proc", "/proc", "proc", flags, "subset=pid") == 0)
        return 0;
    return errno == EINVAL ? mount("proc", "/proc", "proc", flags, NULL) : -1;
}

static PyObject *
native_prepare(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"channel", "stdout", "stderr", "net_ns_fd", "ipc_ns_fd",
                             "uts_ns_fd", "mount_ns_fd", "cgroup_fds", "scratch_view",
                             "tmpfs_options", "uid", "seccomp_filter", "expected_parent",
                             "in_pid_ns", "rlimits", NULL};
    int chan, out, err, netfd, ipcfd, utsfd, mntfd, uid, expected_parent, in_pid_ns;
    const char *view, *tmpfs_options, *rlimits, *cgroup_bytes;
    Py_ssize_t rlimits_size, cgroup_size, k;
    int cgroup_fds[MAX_CGROUP_FDS], n_cgroup = 0;
    unsigned long long fprog;
    static char rlimit_failed[32];
    int costs[S_COUNT] = {0};
    int failed = -1, error = 0;
    const char *what = "";
    long long t, t2;
    struct mount_attr_ attr = {MOUNT_ATTR_RDONLY_, 0, 0, 0};
    int devnull;

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$iiiiiiiy#yyiKipy#", kwlist, &chan, &out,
                                     &err, &netfd, &ipcfd, &utsfd, &mntfd, &cgroup_bytes,
                                     &cgroup_size, &view, &tmpfs_options, &uid, &fprog,
                                     &expected_parent, &in_pid_ns, &rlimits, &rlimits_size))
        return NULL;
    if (cgroup_size % (Py_ssize_t)sizeof(int) || cgroup_size > (Py_ssize_t)sizeof cgroup_fds) {
        PyErr_SetString(PyExc_ValueError, "cgroup_fds: packed ints, at most 4");
        return NULL;
    }
    n_cgroup = (int)(cgroup_size / (Py_ssize_t)sizeof(int));
    memcpy(cgroup_fds, cgroup_bytes, (size_t)cgroup_size);

#define FAIL(step, text) do { failed = (step); error = errno; what = (text); goto done; } while (0)
#define DONE(step) do { t2 = now_us(); costs[step] = (int)(t2 - t); t = t2; } while (0)

    /* die with the zygote from the first instant (set again after the uid change) */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    prctl(PR_SET_NAME, "ms-child", 0, 0, 0);
    if (getppid() != expected_parent)
        _exit(137);

    t = now_us();
    /* fds: 0 = /dev/null, 1/2 = the capture pipes, 3 = the channel (close-on-exec);
       the namespace fds stay until joined, everything else is closed after that */
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        FAIL(S_FDS, "open /dev/null");
    devnull = above_channel(devnull);
    chan = above_channel(chan);
    out = above_channel(out);
    err = above_channel(err);
    if (netfd >= 0)
        netfd = above_channel(netfd);
    if (ipcfd >= 0)
        ipcfd = above_channel(ipcfd);
    if (utsfd >= 0)
        utsfd = above_channel(utsfd);
    if (mntfd >= 0)
        mntfd = above_channel(mntfd);
    for (k = 0; k < n_cgroup; k++)
        if ((cgroup_fds[k] = above_channel(cgroup_fds[k])) < 0)
            FAIL(S_FDS, "fcntl(F_DUPFD_CLOEXEC)");
    if (devnull < 0 || chan < 0 || out < 0 || err < 0 || netfd < -1 || ipcfd < -1 ||
            utsfd < -1 || mntfd < -1)
        FAIL(S_FDS, "fcntl(F_DUPFD_CLOEXEC)");
    if (dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 ||
            dup3(chan, CHANNEL_FD, O_CLOEXEC) < 0)
        FAIL(S_FDS, "dup2");
    DONE(S_FDS);

    /* join the uid's cgroups: from here on, the whole tree is counted together */
    for (k = 0; k < n_cgroup; k++) {
        if (write(cgroup_fds[k], "0", 1) != 1)
            FAIL(S_CGROUP, "write cgroup.procs");
        close(cgroup_fds[k]);
    }
    DONE(S_CGROUP);

    if (setpgid(0, 0) < 0)
        FAIL(S_SESSION, "setpgid");
    DONE(S_SESSION);

    if (netfd < 0)
        FAIL(S_NET, "no shared network namespace");
    if (setns(netfd, CLONE_NEWNET) < 0)
        FAIL(S_NET, "setns");
    DONE(S_NET);

    if (mntfd >= 0) {  /* a copy of the template view: its root becomes ours */
        if (setns(mntfd, CLONE_NEWNS) < 0)
            FAIL(S_MOUNT, "setns(mnt)");
        close(mntfd);
        if (unshare(CLONE_NEWNS) < 0)
            FAIL(S_MOUNT, "unshare(mnt)");
        if (in_pid_ns && mount_proc() < 0)
            FAIL(S_MOUNT, "mount /proc");
    } else {  /* the host's mounts, read-only */
        if (unshare(CLONE_NEWNS) < 0)
            FAIL(S_MOUNT, "unshare(mnt)");
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            FAIL(S_MOUNT, "mount /");
        if (in_pid_ns && mount_proc() < 0)
            FAIL(S_MOUNT, "mount /proc");
        if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr) < 0)
            FAIL(S_MOUNT, "mount_setattr /");
    }
    if (mount("tmpfs", view, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options) < 0)
        FAIL(S_MOUNT, "mount tmpfs");
    if (chdir(view) < 0)
        FAIL(S_MOUNT, "chdir");
    DONE(S_MOUNT);

    if (ipcfd < 0)
        FAIL(S_IPC, "no shared ipc namespace");
    if (setns(ipcfd, CLONE_NEWIPC) < 0)
        FAIL(S_IPC, "setns");
    DONE(S_IPC);

    if (utsfd < 0)
        FAIL(S_UTS, "no shared uts namespace");
    if (setns(utsfd, CLONE_NEWUTS) < 0)
        FAIL(S_UTS, "setns");
    /* joined: now only stdio and the channel stay open */
    if (syscall(SYS_close_range, CHANNEL_FD + 1, ~0U, 0) < 0)
        FAIL(S_FDS, "close_range");
    DONE(S_UTS);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        FAIL(S_NNP, "prctl(PR_SET_NO_NEW_PRIVS)");
    DONE(S_NNP);

    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER_, (void *)(uintptr_t)fprog, 0, 0) < 0)
        FAIL(S_SECCOMP, "prctl(PR_SET_SECCOMP)");
    DONE(S_SECCOMP);

    if (setgroups(0, NULL) < 0)
        FAIL(S_UID, "setgroups");
    if (setresgid(uid, uid, uid) < 0)
        FAIL(S_UID, "setresgid");
    if (setresuid(uid, uid, uid) < 0)
        FAIL(S_UID, "setresuid");
    if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid) {
        errno = EPERM;
        FAIL(S_UID, "still another uid after setresuid");
    }
    DONE(S_UID);

    /* set again after the uid change, which clears it; the zygote may be gone already */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        FAIL(S_PDEATHSIG, "prctl(PR_SET_PDEATHSIG)");
    if (getppid() != expected_parent)
        _exit(137);
    DONE(S_PDEATHSIG);

    /* rlimits: entries of (int resource, uint64 soft, uint64 hard), native byte order */
    for (k = 0; k + 20 <= rlimits_size; k += 20) {
        int resource;
        uint64_t soft, hard;
        struct rlimit lim;
        memcpy(&resource, rlimits + k, 4);
        memcpy(&soft, rlimits + k + 4, 8);
        memcpy(&hard, rlimits + k + 12, 8);
        lim.rlim_cur = (rlim_t)soft;
        lim.rlim_max = (rlim_t)hard;
        if (setrlimit(resource, &lim) < 0) {
            snprintf(rlimit_failed, sizeof rlimit_failed, "%d", (int)(k / 20));
            FAIL(S_RLIMITS, rlimit_failed);
        }
    }
    DONE(S_RLIMITS);

done:
    return Py_BuildValue("iis(iiiiiiiiiiii)", failed, error, what, costs[0], costs[1],
                         costs[2], costs[3], costs[4], costs[5], costs[6], costs[7],
                         costs[8], costs[9], costs[10], costs[11]);
}

/* fork_in_new_pidns(own_pidns_fd) -> pid: unshare(CLONE_NEWPID), fork, and in the
 * parent setns back to our own pid namespace (own_pidns_fd), so the next fork can do it
 * again. 0 in the child (pid 1 of its new namespace), the child's pid in the parent;
 * -errno if the namespace could not be made (nothing forked); OSError if fork or the
 * setns back failed. Like isolation.fork_light: glibc's fork without CPython's
 * after-fork hooks (single-threaded caller holding the GIL), and no Python object
 * touched between the fork and the return — in the zygote every page written after a
 * fork is a copy-on-write fault. */
static PyObject *
native_fork_in_new_pidns(PyObject *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg);
    pid_t pid;
    int fork_errno;

    (void)self;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (unshare(CLONE_NEWPID) < 0)
        return PyLong_FromLong(-errno);
    pid = fork();
    if (pid == 0)
        return PyLong_FromLong(0);
    fork_errno = errno;
    if (setns(fd, CLONE_NEWPID) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (pid < 0) {
        errno = fork_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
}

static PyMethodDef native_methods[] = {
    {"prepare", (PyCFunction)(void (*)(void))native_prepare, METH_VARARGS | METH_KEYWORDS,
     "Apply the isolation steps of a sandbox child (see the module source)."},
    {"fork_in_new_pidns", native_fork_in_new_pidns, METH_O,
     "Fork a child as pid 1 of a new pid namespace (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native isolation of a sandbox child (optional; see native_plan.py).", -1,
    native_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "STEP_NAMES",
            "fds cgroup session net_ns mount_ns ipc_ns uts_ns no_new_privs seccomp uid "
            "pdeathsig rlimits") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
