"""The ``mistral-sandbox`` command: run, list and show actions.

``run`` exits 0 when the outcome is ``ok`` (and the action's ``Result`` is not
an error), 1 for any other outcome, 2 for bad command-line input (a malformed
parameter, limit or context, or a reference that names no action: checked before
any sandbox starts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from mistral_sandbox.actions.catalog import ActionReferenceError, Catalog, default_catalog
from mistral_sandbox.runner.limits import ALIASES, FIELD_NAMES, LimitError, Limits

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _parse_value(text: str) -> Any:
    """``--param k=v``: v is JSON if it parses as JSON, else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_object(text: str, option: str, shape: str = "a JSON object") -> Dict[str, Any]:
    """``text`` (or, as ``@FILE``, that file's content) parsed as a JSON object;
    UsageError naming ``option`` otherwise."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError("%s: cannot read %s: %s" % (option, text[1:], exc.strerror)) \
                from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError("%s: invalid JSON: %s" % (option, exc)) from None
    if not isinstance(value, dict):
        raise UsageError("%s: expected %s, got %s" % (option, shape, type(value).__name__))
    return value


def parse_params(pairs: List[str], params_json: Optional[str]) -> Dict[str, Any]:
    params: Dict[str, Any] = {}
    if params_json:
        params.update(_json_object(params_json, "--params-json"))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError("--param %r: expected NAME=VALUE" % pair)
        params[key.strip()] = _parse_value(value)
    return params


def parse_limits(pairs: List[str]) -> Optional[Limits]:
    if not pairs:
        return None
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError("--limit %r: expected NAME=VALUE, e.g. memory=256MiB" % pair)
        values[key.strip()] = value.strip()
    try:
        return Limits.parse(values)
    except LimitError as exc:
        raise UsageError("--limit: %s" % exc) from None


def _print_outcome_human(outcome) -> None:
    out = sys.stdout
    out.write("outcome: %s" % outcome.exit_reason)
    if outcome.message:
        out.write(" — %s" % outcome.message)
    out.write("\n")
    if outcome.result is not None:
        r = outcome.result
        if r.is_error():
            out.write("error result: %s\n" % json.dumps(r.error, default=str))
        elif r.is_cancel():
            out.write("cancelled\n")
        else:
            out.write("result: %s\n" % json.dumps(r.data, default=str))
    if outcome.async_handle is not None:
        out.write("async handle: action execution %s\n"
                  % outcome.async_handle.action_execution_id)
    u = outcome.usage
    out.write("usage: wall %.1f ms, cpu %.1f ms user + %.1f ms sys, max RSS %.1f MiB\n" % (
        u.wall * 1000, u.cpu_user * 1000, u.cpu_sys * 1000, u.max_rss / 2 ** 20))
    for name, text, total in (("stdout", outcome.stdout, outcome.stdout_bytes),
                              ("stderr", outcome.stderr, outcome.stderr_bytes)):
        if text:
            shown = "last %d of %d bytes" % (len(text.encode()), total) \
                if total > len(text.encode()) else "%d bytes" % total
            out.write("--- %s (%s) ---\n%s%s" % (name, shown, text,
                                                 "" if text.endswith("\n") else "\n"))
    for note in outcome.notes:
        out.write("note: %s\n" % note)
    if outcome.traceback and outcome.exit_reason != "ok":
        out.write("--- traceback ---\n%s" % outcome.traceback)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


def check_reference(ref: str) -> None:
    """UsageError (exit 2) for a reference that names no action, before any sandbox
    starts; the message points at ``mistral-sandbox list``."""
    try:
        default_catalog().resolve(ref)
    except ActionReferenceError as exc:
        raise UsageError("%s\n(`mistral-sandbox list` shows the installed actions)"
                         % exc) from None


def run_reference(args):
    """``run``'s action: REF (checked against the catalog), or ``--source FILE --class
    NAME`` (a tenant-source action; the file is read here, compiled only in the child)."""
    from mistral_sandbox.actions.catalog import SourceRef
    if (args.ref is None) == (args.source is None):
        raise UsageError("give either an action reference or --source FILE --class NAME")
    if args.source is None:
        if args.class_name or args.module:
            raise UsageError("--class and --module go with --source")
        check_reference(args.ref)
        return args.ref
    if not args.class_name:
        raise UsageError("--source needs --class NAME: the action class the file defines")
    try:
        with open(args.source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError("--source: cannot read %s: %s" % (
            args.source, getattr(exc, "strerror", None) or exc)) from None
    module = args.module or os.path.splitext(os.path.basename(args.source))[0]
    ref = SourceRef(text, args.class_name, module)
    try:
        ref.resolve()
    except ActionReferenceError as exc:
        raise UsageError("--source: %s" % exc) from None
    return ref


def parse_context(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """``--context-json``: a JSON object (or ``@FILE``: keep an auth token out of the
    command line, where every user of the host can read it) with ``security`` and
    ``execution`` maps whose fields are those of the API's contexts; UsageError names
    what is wrong."""
    from mistral_sandbox.runner.request import context_dict

    if not text:
        return None
    context = _json_object(text, "--context-json",
                           'a JSON object {"security": {...}, "execution": {...}}')
    try:
        context_dict(context)
    except ValueError as exc:
        raise UsageError("--context-json: %s" % exc) from None
    return context


def load_settings(args, **overrides):
    """SandboxSettings from ``--config-file`` (its ``[sandbox]`` group; none: the
    defaults) and ``--policy-file``, ``overrides`` on top; UsageError naming the file and
    option that is wrong."""
    from mistral_sandbox import config
    try:
        conf = config.load(args.config_file)
        policy_file = getattr(args, "policy_file", None)
        if policy_file:
            overrides["policy_file"] = policy_file
        return config.settings_from(conf, **overrides)
    except ValueError as exc:
        where = " (%s)" % ", ".join(args.config_file) if args.config_file else ""
        raise UsageError("configuration%s: %s" % (where, exc)) from None


def cmd_run(args) -> int:
    from mistral_sandbox import PolicyFileError, Sandbox, SandboxError

    ref = run_reference(args)
    params = parse_params(args.param or [], args.params_json)
    limits = parse_limits(args.limit or [])
    context = parse_context(args.context_json)
    # one execution: nothing to prepare ahead; wait for its exit, so the output shows the
    # exit status and the kernel's account of its CPU and memory
    settings = load_settings(args, max_workers=1, warm=0, wait_exit=True)
    if args.preload:
        settings = dataclasses.replace(settings, preload=settings.preload + tuple(args.preload))
    # SIGTERM behaves like Ctrl-C: kill the child, clean up, exit (130).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        sandbox = Sandbox(settings)
    except PolicyFileError as exc:
        raise UsageError(str(exc)) from None
    except SandboxError as exc:
        sys.stderr.write("mistral-sandbox: %s\n" % exc)
        return EXIT_FAILED
    with sandbox:
        outcome = sandbox.run(ref, params, context=context, limits=limits,
                              mode="test" if args.dry_run else "run")
    if args.json:
        json.dump(outcome.to_dict(), sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        _print_outcome_human(outcome)
    if outcome.ok and (outcome.result is None or outcome.result.is_success()):
        return EXIT_OK
    return EXIT_FAILED


def cmd_list(args) -> int:
    catalog: Catalog = default_catalog()
    entries = catalog.entries()
    dups = {(e.namespace, e.name) for group in catalog.duplicates() for e in group}
    if args.json:
        json.dump([{"name": e.name, "namespace": e.namespace, "target": e.target,
                    "distribution": e.distribution,
                    "duplicate": (e.namespace, e.name) in dups} for e in entries], sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    shadowed = set()
    seen = set()
    for e in entries:
        if e.name in seen:
            shadowed.add((e.namespace, e.name))
        seen.add(e.name)
    width = max([len(e.name) for e in entries] + [4])
    for e in entries:
        flags = []
        if (e.namespace, e.name) in dups:
            flags.append("DUPLICATE")
        if (e.namespace, e.name) in shadowed:
            alias = "mistral" if e.namespace == "mistral.actions" else e.namespace
            flags.append("shadowed; use %s@%s" % (e.name, alias))
        suffix = ("  [%s]" % ", ".join(flags)) if flags else ""
        sys.stdout.write("%-*s  %-24s %s%s\n" % (width, e.name, e.namespace, e.target, suffix))
    return EXIT_OK


def cmd_show(args) -> int:
    from mistral_sandbox import Sandbox, SandboxError

    check_reference(args.ref)
    try:
        sandbox = Sandbox(max_workers=1, warm=0)
    except SandboxError as exc:
        sys.stderr.write("mistral-sandbox: %s\n" % exc)
        return EXIT_FAILED
    with sandbox:
        outcome = sandbox.run(args.ref, mode="describe")
    if not outcome.ok:
        sys.stderr.write("mistral-sandbox: cannot show %s: %s: %s\n"
                         % (args.ref, outcome.exit_reason, outcome.message))
        return EXIT_FAILED
    info = outcome.result.data
    if args.json:
        json.dump(info, sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    sys.stdout.write("%s\n  class: %s\n" % (info["signature"], info["class"]))
    for p in info["parameters"]:
        sys.stdout.write("  param %s%s\n" % (p["name"], "" if p["required"]
                                             else " (default %s)" % p["default"]))
    if info.get("legacy"):
        sys.stdout.write("  legacy action: run() takes no context (deprecated)\n")
    if info["doc"]:
        sys.stdout.write("\n%s\n" % "\n".join("  " + line for line in info["doc"].splitlines()))
    return EXIT_OK


def cmd_limits(args) -> int:
    """The effective limits of ``--project`` running ``--action`` and their sources."""
    from mistral_sandbox.runner.limits_policy import (LimitsPolicy, PolicyFileError,
                                                      ceiling_sources)
    settings = load_settings(args)
    sources = ceiling_sources(settings.ceiling)
    if settings.policy_file:
        try:
            policy = LimitsPolicy.load(settings.policy_file, settings.ceiling,
                                       [e.name for e in default_catalog().entries()], sources)
        except PolicyFileError as exc:
            raise UsageError(str(exc)) from None
    else:
        policy = LimitsPolicy(settings.ceiling, ceiling_sources=sources)
    resolved = policy.resolve(args.project, args.action or "")
    values = resolved.limits.to_dict(human=True)
    if args.json:
        json.dump({"project": args.project, "action": args.action,
                   "policy_file": settings.policy_file,
                   "limits": {name: values.get(name) for name in FIELD_NAMES},
                   "nested": resolved.nested, "sources": dict(resolved.sources),
                   "warnings": policy.warnings}, sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    for warning in policy.warnings:
        sys.stderr.write("warning: %s\n" % warning)
    sys.stdout.write("limits of project %s, action %s (policy: %s)\n" % (
        args.project or "*", args.action or "*", settings.policy_file or "none"))
    for name in FIELD_NAMES + ("nested",):
        value = resolved.nested if name == "nested" else values.get(name, "unlimited")
        if isinstance(value, bool):
            value = "allowed" if value else "denied"
        sys.stdout.write("  %-18s %-10s %s\n" % (name, value, resolved.sources[name]))
    return EXIT_OK


def cmd_serve(args) -> int:
    """Mistral's executor, every action sandboxed (see mistral_sandbox.mistral.service)."""
    from mistral_sandbox.mistral import service
    try:
        return service.serve(args.config_file or [], args.log_file, args.preload)
    except service.MissingMistral as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # the configuration, its [sandbox] options, the policy
        raise UsageError("configuration: %s" % exc) from None


def cmd_check(args) -> int:
    from mistral_sandbox.runner import check
    settings = load_settings(args) if args.config_file else None
    policy = dict(settings.isolation) if settings else {}
    policy.update(_parse_policy(args.policy) or {})
    library = args.seccomp_library or (settings.seccomp_library if settings else None)
    try:
        result = check.probe(policy or None, library,
                             settings.extra_path if settings else ())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(check.format_human(result) + "\n")
    return EXIT_OK if not result.get("error") else EXIT_FAILED


def _parse_policy(pairs) -> Optional[Dict[str, str]]:
    policy = {}
    for pair in pairs or []:
        step, sep, level = pair.partition("=")
        if not sep:
            raise UsageError("--policy %r: expected STEP=LEVEL" % pair)
        policy[step.strip()] = level.strip()
    return policy or None


def cmd_bench(args) -> int:
    from mistral_sandbox import bench
    from mistral_sandbox.runner.steps import PolicyError, make_policy
    settings = load_settings(args) if args.config_file else None
    policy = dict(settings.isolation) if settings else {}
    policy.update(_parse_policy(args.policy) or {})
    policy = policy or None
    try:
        make_policy(policy)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    if args.warm is not None and args.warm < 0:
        raise UsageError("--warm: the warm pool size must be >= 0, got %d" % args.warm)
    warm = args.warm if args.warm is not None or not settings else settings.warm
    report = bench.run(quick=args.quick, soak=args.soak, isolation=policy, warm=warm,
                       progress=bench.Progress("always" if args.progress else True))
    report["isolation_policy"] = policy or {}
    paths = bench.save(report, args.out) if args.out else []
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(bench.format_table(report) + "\n")
        for p in paths:
            sys.stdout.write("wrote %s\n" % p)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mistral-sandbox",
                                description="Run Mistral Python actions in a sandbox.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    _add_run_parsers(sub)

    lst = sub.add_parser("list", help="list the actions that entry points register")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="show an action's parameters and docstring")
    show.add_argument("ref")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    bn = sub.add_parser("bench", help="benchmark the sandbox against real baselines")
    bn.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    bn.add_argument("--json", action="store_true", help="print the whole report as JSON")
    bn.add_argument("--soak", type=int, default=0, metavar="N",
                    help="also run N executions and report RSS/fd growth")
    bn.add_argument("--out", default="benchmarks/results", metavar="DIR",
                    help="where to write the JSON report and PNG charts ('' to skip)")
    bn.add_argument("--progress", action="store_true",
                    help="show progress even when stderr is not a terminal")
    bn.add_argument("--policy", action="append", metavar="STEP=LEVEL",
                    help="isolation policy override, e.g. pid_ns=off")
    bn.add_argument("--warm", type=int, metavar="N",
                    help="children kept prepared ahead (default: Sandbox's, 4): a larger "
                         "pool absorbs bursts, but a saturated machine prepares more of "
                         "them at once")
    _config_arguments(bn)
    bn.set_defaults(func=cmd_bench)

    srv = sub.add_parser("serve", help="run as Mistral's executor: every action Mistral "
                                       "sends runs in the sandbox")
    srv.add_argument("--config-file", action="append", metavar="FILE",
                     help="Mistral's configuration (transport_url, [executor]) and the "
                          "[sandbox] options; repeatable, later files win")
    srv.add_argument("--log-file", metavar="FILE", help="log here instead of stderr")
    srv.add_argument("--preload", action="append", metavar="MODULE",
                     help="operator-trusted module the zygote imports once (repeatable)")
    srv.set_defaults(func=cmd_serve)

    chk = sub.add_parser("check", help="show what isolation this host enforces")
    chk.add_argument("--json", action="store_true")
    chk.add_argument("--policy", action="append", metavar="STEP=LEVEL",
                     help="override a step's policy (required, best_effort, off)")
    chk.add_argument("--seccomp-library", help="path of libseccomp to use")
    _config_arguments(chk)
    chk.set_defaults(func=cmd_check)
    return p


def _add_run_parsers(sub) -> None:
    """``run`` and ``limits``."""
    run = sub.add_parser("run", help="run one action in a sandboxed child")
    run.add_argument("ref", nargs="?",
                     help="entry-point name (std.echo, std.http@mistral) or "
                          "package.module:ClassName")
    run.add_argument("--source", metavar="FILE",
                     help="run an action defined in this Python file (tenant source: "
                          "compiled only inside the sandboxed child)")
    run.add_argument("--class", dest="class_name", metavar="NAME",
                     help="with --source: the action class it defines")
    run.add_argument("--module", metavar="NAME",
                     help="with --source: its module name (default: the file's name)")
    run.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                     help="action parameter; VALUE is parsed as JSON if it is JSON")
    run.add_argument("--params-json", metavar="JSON|@FILE", help="parameters as a JSON object")
    run.add_argument("--context-json", metavar="JSON|@FILE",
                     help="action context {security: {...}, execution: {...}}; give an "
                          "auth token in a file (@FILE), never on the command line")
    run.add_argument("--limit", "-l", action="append", metavar="NAME=VALUE",
                     help="tighten a limit: %s"
                     % ", ".join(sorted(set(FIELD_NAMES) | set(ALIASES))))
    run.add_argument("--dry-run", action="store_true", help="call the action's test()")
    run.add_argument("--json", action="store_true", help="print the outcome as JSON")
    run.add_argument("--preload", action="append", metavar="MODULE",
                     help="operator-trusted module imported before the child forks "
                          "(e.g. mistral_lib.actions: an action's imports cost less)")
    _config_arguments(run, policy_file=True)
    run.set_defaults(func=cmd_run)

    lim = sub.add_parser("limits", help="show the limits a project's action gets, and "
                                        "where each comes from (validates the policy)")
    lim.add_argument("--project", help="project id (default: any project: the '*' entry)")
    lim.add_argument("--action", help="action name (default: an action no entry names)")
    lim.add_argument("--json", action="store_true", help="print a JSON object")
    _config_arguments(lim, policy_file=True)
    lim.set_defaults(func=cmd_limits)


def _config_arguments(parser, policy_file: bool = False) -> None:
    parser.add_argument("--config-file", action="append", metavar="FILE",
                        help="oslo.config file whose [sandbox] options apply (repeatable; "
                             "later files win)")
    if policy_file:
        parser.add_argument("--policy-file", metavar="FILE",
                            help="limits policy (YAML) instead of the configuration's "
                                 "policy_file")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UsageError as exc:
        sys.stderr.write("mistral-sandbox: %s\n" % exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("mistral-sandbox: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
