"""Mistral's own std.http, run by the service's runtime in a sandboxed child, obeys the
operator's Mistral settings ([action_std_http]), not the defaults."""

import http.server
import json
import threading

import pytest

from mistral_sandbox import Sandbox
from mistral_sandbox.actions.catalog import Catalog
from mistral_sandbox.mistral import dispatch, service

pytestmark = pytest.mark.usefixtures("no_leaks")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"hello": "sandbox"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/" % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def serialized_http(url):
    import mistral.db.v2.api  # noqa: F401 (Mistral's import order)
    from mistral.actions import std_actions
    from mistral_lib import serialization
    return serialization.get_polymorphic_serializer().serialize(
        std_actions.HTTPAction(url, timeout=10))


def test_std_http_gets_the_operators_egress_policy(server):
    action = serialized_http(server)
    names = dispatch.ActionNames(Catalog())
    runs = {}
    with Sandbox(max_workers=2, warm=0, ceiling={"network": True},
                 preload=service.SERVE_PRELOAD) as sb:
        for label, conf in (
                ("defaults", None),
                ("open", {"action_std_http": {"denied_cidrs": []}}),
                ("allow-list", {"action_std_http": {"denied_cidrs": [],
                                                    "allowed_hosts": ["example.org"]}})):
            ref, params = dispatch.submission(names, action, conf)
            runs[label] = sb.run(ref, params, limits={"timeout": "60s"})
    # Mistral's default: loopback is blocked (SSRF)
    assert runs["defaults"].exit_reason == "action_error"
    assert "resolves to a blocked address" in runs["defaults"].message
    # the operator opened it: the request goes out, Mistral's result format
    ok = runs["open"]
    assert ok.exit_reason == "ok", ok
    assert ok.result.data["status"] == 200 and ok.result.data["content"] == {"hello": "sandbox"}
    assert ok.action == "std.http"
    assert "not in [action_std_http] allowed_hosts" in runs["allow-list"].message


def test_std_http_in_the_sandbox_answers_as_mistrals_own(server):
    """The runtime runs std.http without importing Mistral's std_actions module (its
    database layer): the same result as Mistral's own HTTPAction.run in this process."""
    import mistral.db.v2.api  # noqa: F401
    from mistral.actions import std_actions
    from oslo_config import cfg
    cfg.CONF.set_override("denied_cidrs", [], group="action_std_http")
    try:
        own = std_actions.HTTPAction(server, timeout=10).run(None)
    finally:
        cfg.CONF.clear_override("denied_cidrs", group="action_std_http")
    ref, params = dispatch.submission(dispatch.ActionNames(Catalog()), serialized_http(server),
                                      {"action_std_http": {"denied_cidrs": []}})
    with Sandbox(max_workers=1, warm=0, ceiling={"network": True},
                 preload=service.SERVE_PRELOAD) as sb:
        out = sb.run(ref, params, limits={"timeout": "60s"})
    assert out.ok, out
    ours = out.result.data
    for key in ("content", "status", "url", "encoding", "reason", "cookies", "history"):
        assert ours[key] == own[key], key
    assert ours["headers"]["Content-Type"] == own["headers"]["Content-Type"]
