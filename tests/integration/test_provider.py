"""The sandbox action provider in real Mistral: tenant actions that no Mistral process
imports or executes, run by `serve`."""

import json
import os

import psutil

from tests.integration.test_serve import one_task, task_of

GREET_SOURCE = '''
import os
# module code: if any Mistral process ran this, the file would appear on the host
try:
    with open(%(marker)r, "w") as f:
        f.write("tenant code ran in %%d" %% os.getpid())
except OSError:
    pass

from mistral_lib import actions


class Greet(actions.Action):
    """Greets %(who)s."""

    def __init__(self, name, punctuation="!"):
        super().__init__()
        self.name = name
        self.punctuation = punctuation

    def run(self, context):
        return "%(greeting)s %%s%%s" %% (self.name, self.punctuation)
'''


def no_import_markers(stack):
    assert os.listdir(stack.markers) == [], "a Mistral process imported tenant code"


def upload(stack, module, source, action, class_name):
    stack.request("POST", "/code_sources?name=%s" % module, source, "text/plain")
    stack.request("POST", "/dynamic_actions", {"name": action, "class_name": class_name,
                                               "code_source_name": module})


def test_a_sandbox_catalog_action_is_offered_with_its_parameters_and_runs(stack):
    action = stack.request("GET", "/actions/itest.sandboxed")
    assert action["input"] == "text, times=2"
    assert action["description"] == "Shout ``text``, ``times`` times."
    ex = stack.wait_execution(stack.start(one_task(stack, "wf_sandboxed",
                                                   'itest.sandboxed text="hey"')))
    assert ex["state"] == "SUCCESS", ex
    assert ex["output"]["out"] == "HEY HEY"
    no_import_markers(stack)


def test_a_tenant_code_source_runs_only_in_the_sandbox(stack, tmp_path):
    marker = str(tmp_path / "tenant-code-ran")
    upload(stack, "tenant_greet", GREET_SOURCE % {"marker": marker, "who": "somebody",
                                                  "greeting": "Hello"},
           "tenant.greet", "Greet")
    action = stack.request("GET", "/actions/tenant.greet")
    assert action["input"] == 'name, punctuation="!"'
    assert action["description"] == "Greets somebody."
    ex = stack.wait_execution(stack.start(one_task(stack, "wf_tenant_greet",
                                                   'tenant.greet name="Ada"')))
    assert ex["state"] == "SUCCESS", ex
    assert ex["output"]["out"] == "Hello Ada!"
    assert not os.path.exists(marker)
    no_import_markers(stack)
    assert "action source:tenant_greet:Greet [action_ex_id=" in stack.log("serve")

    # an update takes effect for the next execution, without restarting anything
    stack.request("PUT", "/code_sources?identifier=tenant_greet", GREET_SOURCE % {
        "marker": marker, "who": "somebody", "greeting": "Bonjour"}, "text/plain")
    ex = stack.wait_execution(stack.start("wf_tenant_greet"))
    assert ex["state"] == "SUCCESS" and ex["output"]["out"] == "Bonjour Ada!", ex

    # deleted: new executions fail, clearly
    stack.request("DELETE", "/dynamic_actions/tenant.greet")
    stack.request("DELETE", "/code_sources/tenant_greet")
    ex = stack.wait_execution(stack.start("wf_tenant_greet"))
    assert ex["state"] == "ERROR"
    assert "tenant.greet" in (ex["state_info"] or ""), ex["state_info"]


def test_a_code_source_with_a_syntax_error_fails_its_task_with_the_line(stack):
    upload(stack, "tenant_broken", "from mistral_lib import actions\n\n"
                                   "class Broken(actions.Action):\n"
                                   "    def run(self context):\n        return 1\n",
           "tenant.broken", "Broken")
    ex = stack.wait_execution(stack.start(one_task(stack, "wf_tenant_broken",
                                                   "tenant.broken")))
    assert ex["state"] == "ERROR"
    info = task_of(stack, ex["id"])["state_info"]
    assert "syntax error in tenant source tenant_broken, line 4" in info, info
    assert "def run(self context):" in info


HOSTILE_SOURCE = '''
import os
from mistral_lib import actions


class Snoop(actions.Action):
    def __init__(self, pids):
        super().__init__()
        self.pids = pids

    def run(self, context):
        found = {"own": dict(os.environ), "parent": os.getppid()}
        for pid in [os.getppid(), 1] + list(self.pids):
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    found[str(pid)] = f.read().decode(errors="replace")
            except OSError as exc:
                found[str(pid)] = type(exc).__name__
        return found
'''


def test_hostile_tenant_code_finds_no_secret_of_mistral_or_the_executor(stack):
    upload(stack, "tenant_snoop", HOSTILE_SOURCE, "tenant.snoop", "Snoop")
    mistral = stack.procs["mistral"][0]
    pids = [p.pid for p in psutil.Process(mistral.pid).children(recursive=True)] + \
        [mistral.pid, stack.procs["serve"][0].pid]
    ex = stack.wait_execution(stack.start(one_task(stack, "wf_tenant_snoop",
                                                   "tenant.snoop pids=%s" % json.dumps(pids))))
    assert ex["state"] == "SUCCESS", ex
    text = json.dumps(ex["output"]["out"])
    assert "s3cr3t-of-the-executor" not in text
    assert "ITEST_IMPORT_MARKERS" not in text and "rabbit://" not in text
    for pid in pids:
        assert ex["output"]["out"][str(pid)] in ("FileNotFoundError", "PermissionError")
