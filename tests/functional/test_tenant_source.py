"""Tenant-source actions: Python text compiled and run only inside the sandboxed child."""

import builtins
import os
import subprocess
import sys

import pytest

from mistral_sandbox import SourceRef
from tests.conftest import FIXTURES

GREETER = '''
from mistral_sandbox.api import Action

GREETING = "hello"


class Greet(Action):
    """Greets somebody."""

    def __init__(self, name):
        self.name = name

    def run(self, context):
        return "%s %s" % (GREETING, self.name)
'''


@pytest.fixture
def sb(sandbox, clean):
    """The module's shared sandbox; nothing may be left behind by a test."""
    return sandbox


def test_a_tenant_source_action_runs_and_describes(sb):
    out = sb.run(SourceRef(GREETER, "Greet", "acme_greet"), {"name": "Ada"})
    assert out.ok and out.result.data == "hello Ada"
    assert out.action == "source:acme_greet:Greet"
    # a tenant cannot pass its code off as an installed action in the operator's policy
    installed_name = sb.run(SourceRef(GREETER, "Greet", "sample_actions"), {"name": "x"})
    assert installed_name.action == "source:sample_actions:Greet"
    info = sb.run(SourceRef(GREETER, "Greet", "acme_greet"), mode="describe").result.data
    assert [p["name"] for p in info["parameters"]] == ["name"]
    assert info["doc"] == "Greets somebody."


def test_the_source_runs_only_inside_the_child(sb, tmp_path):
    """Module code that leaves a trace wherever it runs outside a sandbox: a flag in
    this process, a file in a host directory no sandboxed child can see."""
    marker = tmp_path / "tenant-code-ran-here"
    source = '''
import builtins, os
builtins.TENANT_SOURCE_RAN = True
try:
    with open(%r, "w") as f:
        f.write(str(os.getpid()))
except OSError:
    pass
from mistral_sandbox.api import Action


class WhereAmI(Action):
    def run(self, context):
        return os.getpid()
''' % str(marker)
    out = sb.run(SourceRef(source, "WhereAmI", "probe"))
    assert out.ok, out
    assert out.result.data not in (os.getpid(), sb.zygote_info["pid"])
    assert not hasattr(builtins, "TENANT_SOURCE_RAN")
    assert not marker.exists()
    assert "probe" not in sys.modules


@pytest.mark.parametrize("source, class_name, message", [
    ("from mistral_sandbox.api import Action\n\nclass A(Action):\n    def run(self context):\n"
     "        return 1\n", "A",
     "syntax error in tenant source mod, line 4: invalid syntax\n    def run(self context):"),
    ("import os\nimport no_such_module_anywhere\n", "A",
     "tenant source mod failed at line 2: ModuleNotFoundError: No module named "
     "'no_such_module_anywhere'\n    import no_such_module_anywhere"),
    ("X = 1\nY = 1 / 0\n", "A",
     "tenant source mod failed at line 2: ZeroDivisionError: division by zero\n    Y = 1 / 0"),
    (GREETER, "Gret", "tenant source mod has no class 'Gret' (classes it defines: Greet)"),
    ("X = 1\n", "Greet", "tenant source mod has no class 'Greet' (it defines no classes)"),
    (GREETER, "GREETING", "source:mod:GREETING is not an action class: it is a str; an action "
                          "is a class with a run() method"),
])
def test_a_broken_source_is_a_load_error_that_says_where(sb, source, class_name, message):
    out = sb.run(SourceRef(source, class_name, "mod"), {"name": "x"})
    assert out.exit_reason == "load_error"
    assert out.message == message


def test_a_tenant_chosen_name_gains_nothing(sb, tmp_path):
    """Dotted class paths cost the runner no logger each; globs for installed actions
    do not match tenant source; an exception whose text cannot be rendered is still
    the tenant's load_error."""
    import logging
    from mistral_sandbox import Sandbox
    source = ("import logging\nfrom mistral_sandbox.api import Action\n"
              "class A(Action):\n    def run(self, context):\n"
              "        logging.getLogger('t').warning('hi')\n        return 1\n"
              "A.A = A\nA.http = A\n")
    before = set(logging.Logger.manager.loggerDict)
    out = sb.run(SourceRef(source, ".".join(["A"] * 200), "deep"))
    assert out.ok, out
    assert set(logging.Logger.manager.loggerDict) - before == set()
    policy = tmp_path / "policy.yaml"
    policy.write_text('actions:\n  "*": {network: false}\n  "*.http": {network: true}\n')
    with Sandbox(max_workers=1, warm=0, ceiling={"network": True},
                 policy_file=str(policy)) as s2:
        granted = s2.run(SourceRef(source, "A.http", "t"))
    assert granted.limits["network"] is False and granted.limit_sources["network"] == \
        "action *"
    broken = sb.run(SourceRef("class E(Exception):\n    def __str__(self):\n"
                              "        raise RuntimeError('no')\nraise E()\n", "A", "m"))
    assert broken.exit_reason == "load_error"
    assert broken.message == "tenant source m failed at line 4: E: <the exception's text " \
                             "could not be rendered>\n    raise E()"


def test_a_malformed_reference_is_a_load_error(sb):
    out = sb.run(SourceRef(GREETER, "Greet", "not a module"))
    assert out.exit_reason == "load_error"
    assert "malformed tenant source reference 'not a module:Greet'" in out.message


def test_the_cli_runs_a_source_file(tmp_path, no_leaks):
    path = tmp_path / "acme_greet.py"
    path.write_text(GREETER)
    exe = os.path.join(os.path.dirname(sys.executable), "mistral-sandbox")
    p = subprocess.run([exe, "run", "--source", str(path), "--class", "Greet", "-p",
                        "name=Bob", "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"data": "hello Bob"' in p.stdout and '"action": "source:acme_greet:Greet"' in p.stdout
    p = subprocess.run([exe, "run", "std.echo", "--source", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert "give either an action reference or --source FILE --class NAME" in p.stderr


# The hostile suite's attacks, written as tenant source: contained exactly as when the
# same classes are installed (same outcome, same result).
ATTACKS = [
    ("hostile_actions", "Ptraces", {"pid": 1}),
    ("hostile_actions", "WritesOutside", {}),
    ("hostile_actions", "ReadsHostSecrets", {}),
    ("hostile_actions", "EscapesNamespaces", {}),
    ("hostile_actions", "ExecsSetuidBinary", {}),
    ("hostile_actions", "UsesIPC", {}),
    ("hostile_actions", "UsesLocalSockets", {"path": "/run/nothing.sock"}),
    ("escape_actions", "UsesIoUring", {}),
    ("escape_actions", "UsesNetlink", {}),
    ("escape_actions", "OpensPtys", {}),
    ("escape_actions", "ReadsHostFiles", {}),
    ("escape_actions", "ReadsHostWideProcFiles", {}),
    ("escape_actions", "ForksMemoryHogs", {}),
    ("sample_actions", "ForkBomb", {}),
    ("sample_actions", "SpinsCPU", {}),
]


@pytest.mark.parametrize("module, cls, params", ATTACKS, ids=[a[1] for a in ATTACKS])
def test_attacks_as_tenant_source_are_contained_as_installed(sb, module, cls, params):
    with open(os.path.join(FIXTURES, module + ".py")) as f:
        source = f.read()
    limits = {"timeout": "5s", "cpu": "2s"}
    installed = sb.run("%s:%s" % (module, cls), params, limits=limits)
    as_source = sb.run(SourceRef(source, cls, module + "_src"), params, limits=limits)
    assert as_source.exit_reason == installed.exit_reason, (installed, as_source)
    if installed.result is not None:
        # (the namespace ids UsesIPC reports are its sandbox uid's: they differ by run)
        strip = (lambda d: {k: v for k, v in d.items() if k != "ns"}) \
            if isinstance(installed.result.data, dict) else (lambda d: d)
        assert strip(as_source.result.data) == strip(installed.result.data)


def test_a_load_error_before_resolving_names_the_source_not_its_text(sb):
    out = sb.run(SourceRef("SECRET = 'hunter2'\n", "A", "m"), {"sandbox_limits": "bad"})
    assert out.exit_reason == "load_error"
    assert out.action == "source:m:A"
    assert "hunter2" not in str(out.to_dict())
