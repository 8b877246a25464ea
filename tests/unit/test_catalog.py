import os
import textwrap

import pytest

from mistral_sandbox.actions.catalog import (AmbiguousAction, Catalog, InvalidReference,
                                             UnknownAction, MISTRAL_NAMESPACE,
                                             SANDBOX_NAMESPACE)


def make_dist(root, name, entry_points):
    """A real (metadata-only) distribution on a path entry: what pip would leave behind."""
    info = os.path.join(root, "%s-1.0.dist-info" % name)
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(textwrap.dedent(entry_points))


@pytest.fixture
def dists(tmp_path, monkeypatch):
    make_dist(str(tmp_path), "pack_one", """
        [mistral.actions]
        pack.first = pack_one.actions:MistralFirst
        pack.hello = pack_one.actions:Hello
        pack.clash = pack_one.actions:Clash
        """)
    make_dist(str(tmp_path), "pack_two", """
        [mistral.actions]
        pack.clash = pack_two.actions:Clash
        [mistral_sandbox.actions]
        pack.bad = not a target
        pack.first = pack_two.actions:SandboxFirst
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    return Catalog()


def test_std_echo_resolves_to_our_namespace_first(dists):
    ref = dists.resolve("std.echo")  # (Mistral's own std.echo, when installed, comes second)
    assert ref.namespace == SANDBOX_NAMESPACE
    assert ref.target == "mistral_sandbox.actions.std:EchoAction"
    assert ref.distribution == "mistral-sandbox"
    ref = dists.resolve("pack.first")
    assert ref.namespace == SANDBOX_NAMESPACE and ref.target == "pack_two.actions:SandboxFirst"


def test_explicit_namespace_selection(dists):
    ref = dists.resolve("pack.first@mistral")
    assert ref.namespace == MISTRAL_NAMESPACE and ref.target == "pack_one.actions:MistralFirst"
    assert dists.resolve("pack.first@sandbox").namespace == SANDBOX_NAMESPACE
    assert dists.resolve("pack.hello@%s" % MISTRAL_NAMESPACE).target == "pack_one.actions:Hello"
    with pytest.raises(InvalidReference, match="unknown namespace 'nowhere'"):
        dists.resolve("std.echo@nowhere")


def test_falls_through_to_mistral_namespace(dists):
    assert dists.resolve("pack.hello").namespace == MISTRAL_NAMESPACE


def test_duplicates_are_refused_and_reported(dists):
    with pytest.raises(AmbiguousAction) as err:
        dists.resolve("pack.clash")
    assert "pack_one.actions:Clash (distribution pack_one)" in str(err.value)
    assert "pack_two.actions:Clash (distribution pack_two)" in str(err.value)
    dup_names = {e.name for group in dists.duplicates() for e in group}
    assert dup_names == {"pack.clash"}


def test_unknown_with_close_matches(dists):
    with pytest.raises(UnknownAction, match=r"unknown action 'std.ecko'.*did you mean std.echo"):
        dists.resolve("std.ecko")
    with pytest.raises(UnknownAction) as err:
        dists.resolve("zzzzzz")
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("ref,match", [
    ("", "empty"), ("pkg.mod:", "malformed class path"), (":Cls", "malformed class path"),
    ("a b", "malformed action name"), ("pkg-mod:Cls", "malformed class path"), (5, "string"),
])
def test_malformed_references(dists, ref, match):
    with pytest.raises(InvalidReference, match=match):
        dists.resolve(ref)


def test_malformed_entry_point_target(dists):
    with pytest.raises(InvalidReference, match="malformed target 'not a target'"):
        dists.resolve("pack.bad")


def test_class_path_passes_through_without_import(dists):
    ref = dists.resolve("no_such_module_anywhere:Thing")
    assert ref.kind == "class_path" and ref.target == "no_such_module_anywhere:Thing"


def test_listing_does_not_import_action_modules(dists):
    import sys
    entries = dists.entries()
    assert {"std.echo", "pack.hello", "std.noop"} <= {e.name for e in entries}
    assert "pack_one" not in sys.modules


def test_std_actions_load_through_stevedore():
    stevedore = pytest.importorskip("stevedore")
    mgr = stevedore.ExtensionManager(SANDBOX_NAMESPACE)
    assert {"std.echo", "std.noop", "std.fail", "std.sleep", "std.async_noop"} <= set(mgr.names())
