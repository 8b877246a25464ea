"""Operator configuration: the ``[sandbox]`` options (oslo.config) and reload on SIGHUP.

Every option of :class:`~mistral_sandbox.runner.settings.SandboxSettings` an operator
sets, and the *ceiling*: one option per limit, in the units of
:mod:`~mistral_sandbox.runner.limits` (``256MiB``, ``30s``), the most any execution
may get. Tenants and actions get less (or, up to the ceiling, more than the ``"*"``
entries) through the policy file (``policy_file``; see
:mod:`~mistral_sandbox.runner.limits_policy`).

``oslo-config-generator --namespace mistral_sandbox`` lists the options
(:func:`list_opts`); ``tox -e genconfig`` writes ``etc/mistral-sandbox.conf.sample``.
"""

from __future__ import annotations

import logging
import re
import signal
from typing import Any, Dict, List, Optional, Tuple

from oslo_config import cfg

from mistral_sandbox.runner import protocol
from mistral_sandbox.runner import settings as settings_mod
from mistral_sandbox.runner.limits import (BOOL_FIELDS, DEFAULT_CEILING, FIELD_NAMES,
                                           SIZE_FIELDS, TIME_FIELDS, Limits,
                                           format_duration, format_size, parse_value)

GROUP = "sandbox"
UNLIMITED = ("", "unlimited")
LOG = logging.getLogger(__name__)

_LIMIT_HELP = {
    "address_space": "Virtual memory of each process of an execution (RLIMIT_AS).",
    "resident_set_size": "Resident memory of an execution: of its processes together where "
                         "the host has cgroups (memory_limit), else of each process.",
    "data_size": "Data segment of each process (RLIMIT_DATA).",
    "stack_size": "Stack of each process (RLIMIT_STACK).",
    "core_file_size": "Core dump size (RLIMIT_CORE); 0: no core dumps.",
    "file_size": "Largest file an execution may write (RLIMIT_FSIZE).",
    "memory_locked": "Locked memory (RLIMIT_MEMLOCK).",
    "cpu_time": "CPU time of an execution (cpu_limit).",
    "wall_time": "Wall-clock time of an execution, until its last process exited (timeout).",
    "number_files": "Open files per process (RLIMIT_NOFILE).",
    "number_processes": "Processes and threads of an execution (its cgroup, else "
                        "RLIMIT_NPROC).",
    "max_result_bytes": "Size of an action's encoded result (output_limit).",
    "max_output_bytes": "stdout and stderr an execution may write in all (output_limit).",
    "max_log_bytes": "Log records an execution may send to the host (more are dropped).",
    "network": "Let executions use the network (inet, inet6). Grant it to the actions "
               "that need it in the policy file: this option only allows granting.",
    "nested_calls": "Actions an execution may call through the runner (0: none).",
    "nested_depth": "How deep nested calls may go (0: none).",
}


def _unit(name: str) -> str:
    if name in SIZE_FIELDS:
        return "a size: bytes, or with a unit (512K, 256MiB, 1GB)"
    if name in TIME_FIELDS:
        return "a duration: seconds, or with a unit (500ms, 30s, 2m)"
    return "a count"


def _limit_opts() -> List[cfg.Opt]:
    opts: List[cfg.Opt] = []
    for name in FIELD_NAMES:
        default = getattr(DEFAULT_CEILING, name)
        if name in BOOL_FIELDS:
            opts.append(cfg.BoolOpt(name, default=bool(default), help=_LIMIT_HELP[name]
                                    + " Ceiling; safe default: %s." % str(bool(default)).lower()))
            continue
        shown = (format_size(default) if name in SIZE_FIELDS else
                 format_duration(default) if name in TIME_FIELDS else
                 str(default)) if default is not None else "unlimited"
        opts.append(cfg.StrOpt(
            name, default=shown, help="%s Ceiling: the most any execution gets; %s, or "
            "'unlimited'. Safe default: %s." % (_LIMIT_HELP[name], _unit(name), shown)))
    return opts


def _runner_opts() -> List[cfg.Opt]:
    s = settings_mod
    return [
        cfg.StrOpt("policy_file", help="YAML file of per-tenant and per-action limits, "
                   "network and nested calls, under the ceiling (see etc/sandbox-policy."
                   "yaml.sample). Reloaded on SIGHUP by long-running services. Default: "
                   "none, every execution gets the ceiling."),
        cfg.IntOpt("max_workers", default=4, min=1,
                   help="Executions running at once (per process)."),
        cfg.IntOpt("max_queue", default=s.DEFAULT_MAX_QUEUE, min=1,
                   help="Executions waiting for a worker beyond which new ones are refused "
                        "(Overloaded)."),
        cfg.IntOpt("warm", min=0, help="Children kept forked and isolated ahead of requests "
                   "(0: fork on request). Default: min(max_workers, %d)." % s.DEFAULT_WARM),
        cfg.BoolOpt("wait_exit", default=False,
                    help="Deliver an outcome only once its process was reaped (exit status "
                         "and kernel-measured usage), not as soon as it replied."),
        cfg.DictOpt("isolation", default={},
                    help="Isolation step policies, step:level with level required, "
                         "best_effort or off (`mistral-sandbox check` lists the steps). "
                         "Default: the built-in policy."),
        cfg.StrOpt("seccomp_library", help="Path of the libseccomp to load. Default: the "
                   "system's libseccomp.so.2."),
        cfg.StrOpt("scratch_size", default=format_size(s.DEFAULT_SCRATCH_SIZE),
                   help="Size of each execution's private scratch tmpfs (its cwd, HOME and "
                        "TMPDIR); a size, or 'none' for a directory under scratch_root."),
        cfg.StrOpt("scratch_root", help="Where executions' scratch directories live. "
                   "Default: a new temporary directory per process."),
        cfg.BoolOpt("share_namespaces", default=True,
                    help="Children share one ipc and uts namespace per process and a network "
                         "namespace per sandbox uid instead of making their own (faster; "
                         "safe with the seccomp filter)."),
        cfg.BoolOpt("native_isolation", default=True,
                    help="Isolate children with the C helper where it applies (faster; "
                         "same steps)."),
        cfg.ListOpt("preload", default=[],
                    help="Operator-trusted modules imported once before forking (children "
                         "start with them loaded)."),
        cfg.ListOpt("extra_path", default=[],
                    help="Operator-trusted directories added to the children's module path."),
        cfg.IntOpt("uid_start", default=s.DEFAULT_UID_START, min=1,
                   help="First sandbox uid (as root every execution runs as an unused uid of "
                        "the range)."),
        cfg.IntOpt("uid_count", default=s.DEFAULT_UID_COUNT, min=1,
                   help="Number of sandbox uids."),
        cfg.StrOpt("uid_lock_dir", help="Where claims of sandbox uids are locked (shared by "
                   "every sandbox of the host). Default: /run/mistral-sandbox/uids, or under "
                   "the temporary directory when /run is not writable."),
        cfg.IntOpt("max_frame", default=protocol.DEFAULT_MAX_FRAME, min=1024,
                   help="Largest protocol frame, in bytes."),
    ]


def _serve_opts() -> List[cfg.Opt]:
    return [
        cfg.FloatOpt("shutdown_grace", default=30.0, min=0,
                     help="`serve`: seconds running executions get to finish after SIGTERM "
                          "before they are ended with an error result."),
        cfg.FloatOpt("summary_interval", default=60.0, min=0,
                     help="`serve`: seconds between two summary log lines (executions by "
                          "outcome, queue depth); 0: none."),
    ]


def list_opts() -> List[Tuple[str, List[cfg.Opt]]]:
    """The options, for ``oslo-config-generator`` (entry point ``oslo.config.opts``)."""
    return [(GROUP, _runner_opts() + _serve_opts() + _limit_opts())]


def register(conf: cfg.ConfigOpts) -> cfg.ConfigOpts:
    """Register the ``[sandbox]`` options on ``conf`` (again: no-op)."""
    for group, opts in list_opts():
        conf.register_opts(opts, group=group)
    return conf


def load(config_files: Optional[List[str]] = None) -> cfg.ConfigOpts:
    """A fresh ConfigOpts with the options registered, read from ``config_files``.
    ValueError naming the file if one is missing or malformed."""
    conf = register(cfg.ConfigOpts())
    try:
        conf(args=[], project="mistral-sandbox", default_config_files=list(config_files or []),
             use_env=False)
    except (cfg.ConfigFilesNotFoundError, cfg.ConfigFileParseError,
            cfg.ConfigFileValueError) as exc:
        raise ValueError(str(exc)) from None
    return conf


def ceiling_from(group: Any) -> Limits:
    """The ceiling of a ``[sandbox]`` group; LimitError naming the option."""
    values: Dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = getattr(group, name)
        if isinstance(raw, str) and raw.strip().lower() in UNLIMITED:
            continue
        values[name] = parse_value(name, raw, what="[%s] %s" % (GROUP, name))
    return Limits(**values)


def settings_from(conf: Optional[cfg.ConfigOpts] = None, **overrides: Any
                  ) -> settings_mod.SandboxSettings:
    """SandboxSettings from the ``[sandbox]`` group of ``conf`` (default ``cfg.CONF``),
    ``overrides`` replacing fields. ValueError naming the option that is wrong."""
    conf = register(conf if conf is not None else cfg.CONF)
    group = _Group(conf)
    scratch = group.scratch_size
    values = dict(
        ceiling=ceiling_from(group), policy_file=group.policy_file,
        max_workers=group.max_workers, max_queue=group.max_queue, warm=group.warm,
        wait_exit=group.wait_exit, isolation=dict(group.isolation) or None,
        seccomp_library=group.seccomp_library,
        scratch_size=None if scratch.strip().lower() == "none" else scratch,
        scratch_root=group.scratch_root, share_namespaces=group.share_namespaces,
        native_isolation=group.native_isolation, preload=tuple(group.preload),
        extra_path=tuple(group.extra_path), uid_start=group.uid_start,
        uid_count=group.uid_count, uid_lock_dir=group.uid_lock_dir, max_frame=group.max_frame)
    values.update(overrides)
    try:
        return settings_mod.SandboxSettings(**values)
    except ValueError as exc:
        text = str(exc)
        raise type(exc)(text if text.startswith("[") else "[%s] %s" % (GROUP, text)) from None


class _Group:
    """The ``[sandbox]`` group, whose values oslo.config checks on first access: a bad
    one raises ValueError "[sandbox] NAME (FILE): REASON"."""

    def __init__(self, conf: cfg.ConfigOpts):
        self._conf = conf

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(getattr(self._conf, GROUP), name)
        except cfg.ConfigFileValueError as exc:
            text = str(exc)
            reason = text.rpartition("is not valid: ")[2]
            found = re.search(r"detail='([^']*)'", text)  # (the file, in oslo.config's text)
            where = " (%s)" % found.group(1) if found else ""
            raise ValueError("[%s] %s%s: %s" % (GROUP, name, where, reason)) from None


def reload_on_sighup(sandbox: Any) -> Any:
    """Reload ``sandbox``'s policy file when the process gets SIGHUP (main thread only).
    A failed reload keeps the previous policy and logs why; returns the previous
    handler."""
    def reload(signum, frame):
        try:
            sandbox.reload_policy()
        except ValueError:
            pass  # (logged by reload_policy; the previous policy stays)
        except Exception:  # a signal handler must not raise into arbitrary code
            LOG.exception("policy reload failed; the previous policy stays in force")
    return signal.signal(signal.SIGHUP, reload)
