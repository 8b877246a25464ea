"""A real Mistral 23 stack on 127.0.0.1: RabbitMQ, Mistral's API and engine (sqlite,
no auth), and an executor — ``mistral-sandbox serve`` or Mistral's own.

Used by the integration tests (once per session) and by
``benchmarks/mistral_compare.py``. Everything it starts it stops; RabbitMQ only if it
started it. Topics carry a per-stack suffix, so another Mistral or executor on the
host (or a second stack) never takes this stack's messages.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
BIN = os.path.dirname(sys.executable)
RABBIT_SCRIPT = os.path.join(ROOT, "scripts", "rabbitmq.sh")

# the test actions Mistral sees (entry points of a metadata-only distribution)
TEST_ACTIONS = {
    "itest.mistral_lib": "mistral_itest_actions:MistralLibAction",
    "itest.api": "mistral_itest_actions:ApiAction",
    "itest.legacy": "mistral_itest_actions:LegacyAction",
    "itest.fail": "mistral_itest_actions:FailingAction",
    "itest.hog": "mistral_itest_actions:MemoryHog",
    "itest.sleep": "mistral_itest_actions:Sleeper",
    "itest.env": "mistral_itest_actions:ReadsEnvironment",
    "itest.async": "mistral_itest_actions:AsyncAction",
}


# actions only the sandbox action provider offers (Mistral never imports them)
SANDBOX_ONLY_ACTIONS = {
    "itest.sandboxed": "mistral_itest_sandboxed:Shout",
}
# what a tenant may do with code sources and dynamic actions (Mistral: admin only)
MISTRAL_POLICY = "".join('"%s:%s": "@"\n' % (kind, op)
                         for kind in ("code_sources", "dynamic_actions")
                         for op in ("create", "delete", "get", "list", "publicize", "update"))


class StackError(RuntimeError):
    pass


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-30:])
    raise StackError("%s did not happen within %ss%s\n%s" % (
        what, timeout, " (process exited %s)" % proc.returncode
        if proc is not None and proc.poll() is not None else "", tail))


def log_has(path, text):
    if not os.path.exists(path):
        return False
    with open(path, errors="replace") as f:
        return text in f.read()


class RabbitMQ:
    """The broker on 127.0.0.1:5672: used if running, else started (and later stopped)."""

    def __init__(self):
        self.started = False

    def ensure(self):
        if port_open(5672):
            return
        if not shutil.which("rabbitmq-server"):
            raise StackError("RabbitMQ is neither running on 127.0.0.1:5672 nor installed: "
                             "run the tests with scripts/test.sh (it installs it), or "
                             "apt-get install rabbitmq-server")
        subprocess.run(["bash", RABBIT_SCRIPT, "start"], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        self.started = True
        wait_for(lambda: port_open(5672), 30, "RabbitMQ listening on 5672")

    def stop(self):
        if self.started:
            subprocess.run(["bash", RABBIT_SCRIPT, "stop"], timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.started = False


class MistralStack:
    """Mistral's API + engine, an executor, their configuration and database."""

    def __init__(self, sandbox_options="", heartbeat=1, env=None, policy=""):
        self.dir = tempfile.mkdtemp(prefix="mistral-stack-")
        self.suffix = uuid.uuid4().hex[:8]
        self.port = free_port()
        self.url = "http://127.0.0.1:%d/v2" % self.port
        self.procs = {}
        self.conf = os.path.join(self.dir, "mistral.conf")
        self.site = os.path.join(self.dir, "site")
        self.policy = os.path.join(self.dir, "policy.yaml")
        with open(self.policy, "w") as f:
            f.write(textwrap.dedent(policy))
        self._write_site()
        self._write_conf(sandbox_options, heartbeat)
        # (a module the sandbox-only actions leave a file in when they are imported)
        self.markers = os.path.join(self.dir, "import-markers")
        os.makedirs(self.markers)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([self.site, FIXTURES]),
                        ITEST_IMPORT_MARKERS=self.markers, **(env or {}))

    # ------------------------------------------------------------------ set-up

    def _write_site(self):
        info = os.path.join(self.site, "mistral_itest-1.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: mistral-itest\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write("[mistral.actions]\n" + "".join(
                "%s = %s\n" % item for item in sorted(TEST_ACTIONS.items())))
            f.write("[mistral_sandbox.actions]\n" + "".join(
                "%s = %s\n" % item for item in sorted(SANDBOX_ONLY_ACTIONS.items())))

    def _write_conf(self, sandbox_options, heartbeat):
        with open(os.path.join(self.dir, "mistral-policy.yaml"), "w") as f:
            f.write(MISTRAL_POLICY)
        topics = "".join("[%s]\ntopic = mistral_%s_%s\n" % (group, group, self.suffix)
                         for group in ("engine", "executor", "event_engine", "notifier"))
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent("""\
                [DEFAULT]
                transport_url = rabbit://guest:guest@127.0.0.1:5672/
                [api]
                host = 127.0.0.1
                port = %(port)d
                [database]
                connection = sqlite:///%(dir)s/mistral.db
                [pecan]
                auth_enable = False
                [cron_trigger]
                enabled = False
                [action_providers]
                denylist = dynamic
                [oslo_policy]
                policy_file = %(dir)s/mistral-policy.yaml
                [action_heartbeat]
                check_interval = %(hb)d
                max_missed_heartbeats = 5
                first_heartbeat_timeout = 30
                """) % {"port": self.port, "dir": self.dir, "hb": heartbeat})
            f.write(topics.replace("[executor]\n", "[executor]\ntype = remote\n"))
            f.write("[sandbox]\nextra_path = %s\nsummary_interval = 2\npolicy_file = %s\n%s\n"
                    % (FIXTURES, self.policy, textwrap.dedent(sandbox_options)))

    def create_database(self):
        code = ("import mistral.cmd\nfrom mistral import config\n"
                "config.parse_args(['--config-file', %r])\n"
                "from mistral.db.v2 import api\napi.setup_db()\n" % self.conf)
        subprocess.run([sys.executable, "-c", code], check=True, env=self.env, timeout=120,
                       capture_output=True)
        for command in ("stamp head", "populate"):
            subprocess.run([os.path.join(BIN, "mistral-db-manage"), "--config-file",
                            self.conf] + command.split(), check=True, env=self.env,
                           timeout=120, capture_output=True)

    def _start(self, name, argv, ready_text, timeout=90):
        log = os.path.join(self.dir, "%s.log" % name)
        if os.path.exists(log):  # (a restart: its readiness line must be new)
            os.rename(log, "%s.%d" % (log, time.time_ns()))
        out = open(os.path.join(self.dir, "%s.out" % name), "w")
        proc = subprocess.Popen(argv + ["--log-file", log], env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=self.dir,
                                start_new_session=True)
        out.close()
        self.procs[name] = (proc, log)
        wait_for(lambda: log_has(log, ready_text), timeout, "%s ready" % name, proc, log)
        return proc

    def start_mistral(self):
        self.create_database()
        self._start("mistral", [os.path.join(BIN, "mistral-server"), "--config-file",
                                self.conf, "--server", "api,engine"], "Engine server started")
        wait_for(lambda: self._api_up(), 60, "Mistral's API answering",
                 self.procs["mistral"][0], self.procs["mistral"][1])

    def start_executor(self, name="serve", ours=True, extra_conf=None):
        """Our ``serve`` (``ours``) or Mistral's own executor, listening on the topic."""
        confs = ["--config-file", self.conf]
        if extra_conf:
            confs += ["--config-file", extra_conf]
        if ours:
            argv = [os.path.join(BIN, "mistral-sandbox"), "serve"] + confs
        else:
            argv = [os.path.join(BIN, "mistral-server")] + confs + ["--server", "executor"]
        return self._start(name, argv, "Executor server started")

    def stop_process(self, name, sig=signal.SIGTERM, timeout=60):
        proc, _ = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        try:  # anything the process left in its session (Mistral's workers)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode

    def stop(self):
        for name in list(self.procs):
            self.stop_process(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, name):
        with open(os.path.join(self.dir, "%s.log" % name), errors="replace") as f:
            return f.read()

    # ------------------------------------------------------------------ REST

    def _api_up(self):
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def request(self, method, path, body=None, content_type="application/json"):
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise StackError("%s %s: %s %s" % (method, path, exc.code, exc.read()[:500]))
        return json.loads(text) if text else None

    def create_workflow(self, text):
        return self.request("POST", "/workflows", textwrap.dedent(text), "text/plain")

    def start(self, workflow, params=None, wf_input=None):
        body = {"workflow_name": workflow}
        if wf_input is not None:
            body["input"] = json.dumps(wf_input)
        if params is not None:
            body["params"] = json.dumps(params)
        return self.request("POST", "/executions", body)["id"]

    def execution(self, ex_id):
        return self.request("GET", "/executions/%s" % ex_id)

    def wait_execution(self, ex_id, timeout=60, states=("SUCCESS", "ERROR", "CANCELLED")):
        deadline = time.monotonic() + timeout
        while True:
            ex = self.execution(ex_id)
            if ex["state"] in states:
                ex["output"] = json.loads(ex.get("output") or "{}")
                return ex
            if time.monotonic() > deadline:
                raise StackError("execution %s still %s after %ss" % (ex_id, ex["state"],
                                                                      timeout))
            time.sleep(0.05)

    def tasks(self, ex_id):
        return self.request("GET", "/executions/%s/tasks" % ex_id)["tasks"]

    def action_executions(self, task_id):
        return self.request("GET", "/tasks/%s/action_executions" % task_id)[
            "action_executions"]
