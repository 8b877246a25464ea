"""The supervisor's handle on its zygote: start it, talk to it, restart it.

Each start is a new *generation*: a fresh interpreter (``python -I``, a minimal
environment, no inherited fd but its end of the control socket) with a scratch
directory of its own under the sandbox's scratch root (children of a dead
generation may still be dying while the next one starts). The first start blocks
(``Sandbox()`` must fail if it cannot start); restarts after a death never do:
:meth:`schedule_restart` sets a timer with backoff, the engine calls
:meth:`spawn` when it is due and waits for the hello in its selector.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import mistral_sandbox
from mistral_sandbox.runner import control
from mistral_sandbox.runner.errors import SandboxError
from mistral_sandbox.runner.settings import SandboxSettings

LOG = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a new zygote may take to say hello
RESTART_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0)  # seconds before each restart attempt
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mistral_sandbox.__file__)))
_BOOTSTRAP = ("import sys; sys.path.insert(0, %r); "
              "from mistral_sandbox.runner.zygote import main; main()" % _PKG_ROOT)


class ZygoteClient:
    """One sandbox's zygote, generation after generation."""

    backoff = RESTART_BACKOFF

    def __init__(self, settings: SandboxSettings, scratch_root: str):
        self.settings = settings
        self.scratch_root = scratch_root
        self.proc: Optional[subprocess.Popen] = None
        self.ctl: Optional[socket.socket] = None
        self.info: Dict[str, Any] = {}
        self.ready = False          # said hello: serves requests
        self.generation = 0
        self.scratch_dir = ""       # this generation's directory
        self.generation_dirs: List[str] = []
        self.restarts = 0
        self.attempts = 0           # restart attempts scheduled since the last death
        self.failed_attempts = 0    # ... and failed
        self.last_error = ""
        # messages the socket could not take at once (sent in order when it can), each
        # (data, our own dups of its fds); on_backlog(True/False) tells the engine
        self.outbox: List[Tuple[bytes, List[int]]] = []
        self.on_backlog = None
        self.retry_at: Optional[float] = None
        self.hello_deadline: Optional[float] = None

    def start(self) -> None:
        """Start a zygote and wait for its hello; SandboxError with its error output
        if it cannot start."""
        self.spawn()
        self.ctl.settimeout(START_TIMEOUT)
        try:
            self.take_hello()
        except BaseException:  # interrupted while waiting too: leave nothing behind
            self.stop()
            raise

    def spawn(self) -> None:
        """Start a new generation's process; its hello comes later (:meth:`take_hello`).
        SandboxError if it cannot be started."""
        try:
            self._spawn()
        except OSError as exc:
            raise SandboxError("cannot start the zygote: %s" % exc) from None

    def _spawn(self) -> None:
        self.generation += 1
        os.makedirs(self.scratch_root, mode=0o711, exist_ok=True)
        # a name of its own (another sandbox may share the scratch root)
        gen_dir = tempfile.mkdtemp(prefix="g%d-" % self.generation, dir=self.scratch_root)
        os.chmod(gen_dir, 0o711)  # sandbox uids may enter only their own dir
        self.scratch_dir = gen_dir
        self.generation_dirs.append(gen_dir)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = self.settings.zygote_settings(gen_dir, child.fileno())
        try:
            with open(gen_dir + ".stderr", "wb") as err:
                # the settings go through stdin, not argv: every child is a fork of the
                # zygote, and an action can read its /proc/self/cmdline
                self.proc = subprocess.Popen(
                    [self.settings.python, "-I", "-c", _BOOTSTRAP],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                    pass_fds=(child.fileno(),), close_fds=True, start_new_session=True,
                    env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                    cwd="/")
            try:
                self.proc.stdin.write(json.dumps(settings).encode())
                self.proc.stdin.close()
            except BrokenPipeError:
                pass  # it died at once: its hello will not come, its stderr says why
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.ctl = parent
        self.hello_deadline = time.monotonic() + START_TIMEOUT

    def take_hello(self) -> None:
        """Read the new zygote's hello (BlockingIOError if it has not come yet on a
        non-blocking socket); SandboxError if it died first or said something else."""
        try:
            msg, fds = control.recv(self.ctl, 0)
        except BlockingIOError:
            raise
        except (OSError, control.ControlError) as exc:
            LOG.error("the zygote did not answer: %s", exc)
            msg = {}
        if msg.get("op") != control.HELLO:
            self._kill()
            raise SandboxError("the zygote failed to start (exit status %s): %s"
                               % (self.proc.returncode if self.proc else None,
                                  self._error_output() or "no error output"))
        self.ctl.setblocking(False)
        self.info, self.ready, self.hello_deadline = msg, True, None
        self.attempts = self.failed_attempts = 0
        self.retry_at = None
        LOG.debug("zygote %d ready (root=%s)", msg["pid"], msg["root"])
        if msg["unreadable_paths"]:
            LOG.warning("sandbox uids cannot read %s: actions can import from there only "
                        "what the zygote preloaded", ", ".join(msg["unreadable_paths"]))

    def _error_output(self) -> str:
        try:
            with open(self.scratch_dir + ".stderr", "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def send(self, msg: dict, fds=()) -> bool:
        """Send a message, or queue it (with dups of its fds) if the socket is full; False
        if the zygote is gone (noticed on its socket). Never blocks."""
        if self.ctl is None or not self.ready:
            return False
        data = control.encode(msg)
        if not self.outbox:
            try:
                control.send_data(self.ctl, data, fds)
                return True
            except BlockingIOError:
                pass
            except OSError:
                return False
        self.outbox.append((data, [os.dup(fd) for fd in fds]))
        if len(self.outbox) == 1 and self.on_backlog is not None:
            self.on_backlog(True)
        return True

    def flush(self) -> None:
        """The socket is writable: send what is queued, in order."""
        while self.outbox and self.ctl is not None:
            data, fds = self.outbox[0]
            try:
                control.send_data(self.ctl, data, fds)
            except BlockingIOError:
                return
            except OSError:
                break  # gone: noticed on its socket
            self.outbox.pop(0)
            control.close_all(fds)
        if not self.outbox and self.on_backlog is not None:
            self.on_backlog(False)

    def _drop_outbox(self) -> None:
        for _data, fds in self.outbox:
            control.close_all(fds)
        self.outbox = []

    def stop(self, kill: bool = False) -> None:
        """Close the control socket (the zygote then kills its children and exits) and
        wait for the process (``kill``: at once, it failed to start)."""
        self.ready = False
        self.hello_deadline = None
        self._drop_outbox()
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            if kill:
                self._kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.returncode:
                LOG.debug("zygote exit status %s", self.proc.returncode)
            self.proc = None

    def schedule_restart(self, now: float) -> bool:
        """Set the timer of the next restart attempt; False when none is left."""
        if self.attempts >= len(self.backoff):
            self.retry_at = None
            return False
        self.retry_at = now + self.backoff[self.attempts]
        self.attempts += 1
        return True

    def timeout(self, now: float) -> Optional[float]:
        """Seconds until the restart timer or the hello deadline, if either is set."""
        due = [t for t in (self.retry_at, self.hello_deadline) if t is not None]
        return max(0.0, min(due) - now) if due else None

    def remove_generations(self, keep_logs: bool = True) -> None:
        """Remove the generation directories (and, unless kept, their logs) we made."""
        for path in self.generation_dirs:
            shutil.rmtree(path, ignore_errors=True)
            if not keep_logs:
                try:
                    os.unlink(path + ".stderr")
                except OSError:
                    pass
