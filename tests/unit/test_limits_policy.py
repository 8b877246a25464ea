"""The limits policy: precedence (as a property), sources, clamp notes, validation."""

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_sandbox.runner.limits import DEFAULT_CEILING, LimitError, Limits
from mistral_sandbox.runner.limits_policy import (LimitsPolicy, PolicyFileError,
                                                  ceiling_sources)

KNOWN = ["std.echo", "std.noop", "std.sleep", "acme.report", "acme.export"]


def load(tmp_path, text, ceiling=DEFAULT_CEILING, known=KNOWN):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return LimitsPolicy.load(str(path), ceiling, known, ceiling_sources(ceiling)), str(path)


# ---------------------------------------------------------------- precedence

values = st.one_of(st.none(), st.integers(min_value=1, max_value=10 ** 6))
flags = st.one_of(st.none(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(ceiling=values, star_tenant=values, tenant=values, star_action=values, glob=values,
       exact=values, request=values)
def test_effective_value_is_the_minimum_of_the_layers_that_set_it(
        ceiling, star_tenant, tenant, star_action, glob, exact, request):
    def entry(v):
        return {} if v is None else {"number_files": v}
    policy = LimitsPolicy.from_mapping(
        {"tenants": {"*": entry(star_tenant), "p1": entry(tenant)},
         "actions": {"*": entry(star_action), "acme.*": entry(glob),
                     "acme.report": entry(exact)}},
        Limits(number_files=ceiling))
    effective, sources, _ = policy.apply(
        "p1", "acme.report", None if request is None else Limits(number_files=request))
    # within a layer the most specific entry that sets the value is the layer's value
    layers = {"ceiling": ceiling,
              "tenant": tenant if tenant is not None else star_tenant,
              "action": next((v for v in (exact, glob, star_action) if v is not None), None),
              "request": request}
    set_values = [v for v in layers.values() if v is not None]
    if not set_values:
        assert effective.number_files is None
        return
    assert effective.number_files == min(set_values)
    assert all(effective.number_files <= v for v in set_values)
    assert layers[sources["number_files"].split()[0]] == effective.number_files


@settings(max_examples=200, deadline=None)
@given(ceiling=flags, star_tenant=flags, star_action=flags, exact=flags, request=flags)
def test_network_is_allowed_only_if_no_layer_forbids_it(
        ceiling, star_tenant, star_action, exact, request):
    def entry(v):
        return {} if v is None else {"network": v}
    policy = LimitsPolicy.from_mapping(
        {"tenants": {"*": entry(star_tenant)},
         "actions": {"*": entry(star_action), "std.echo": entry(exact)}},
        Limits(network=ceiling))
    effective, _, _ = policy.apply("p", "std.echo",
                                   None if request is None else Limits(network=request))
    action = exact if exact is not None else star_action
    set_values = [v for v in (ceiling, star_tenant, action, request) if v is not None]
    assert effective.network == (all(set_values) if set_values else None)


def test_a_specific_entry_grants_more_than_star_within_the_ceiling(tmp_path):
    ceiling = dataclasses.replace(DEFAULT_CEILING, network=True, address_space=2 * 2 ** 30)
    policy, path = load(tmp_path, """
tenants:
  "*": {memory: 256MiB}
  big: {memory: 4GiB}
actions:
  "*": {network: false}
  std.echo: {network: true}
""", ceiling)
    small = policy.resolve("someone", "std.echo")
    assert small.limits.address_space == 256 * 2 ** 20
    assert small.sources["address_space"] == "tenant *"
    big = policy.resolve("big", "std.noop")
    assert big.limits.address_space == 2 * 2 ** 30  # asked for 4GiB: the ceiling applies
    assert big.sources["address_space"] == "ceiling"
    assert big.limits.resident_set_size == 2 ** 30
    assert big.sources["resident_set_size"] == "default"  # the built-in ceiling: 1GiB
    assert big.limits.network is False and big.sources["network"] == "action *"
    assert small.limits.network is True and small.sources["network"] == "action std.echo"
    # (the entry above the ceiling is reported when the file is loaded)
    assert policy.warnings == [
        "%s: tenants: big: address_space: 4GiB is above the ceiling (2GiB), which applies"
        % path,
        "%s: tenants: big: resident_set_size: 4GiB is above the ceiling (1GiB), which "
        "applies" % path]


def test_exact_beats_glob_and_longer_globs_beat_shorter(tmp_path):
    policy, _ = load(tmp_path, """
actions:
  "*": {cpu_time: 1s}
  "acme.*": {cpu_time: 2s}
  "acme.rep*": {cpu_time: 3s}
  acme.report: {wall_time: 4s}
""")
    r = policy.resolve(None, "acme.report")
    assert r.limits.cpu_time == 3 and r.sources["cpu_time"] == "action acme.rep*"
    assert r.limits.wall_time == 4 and r.sources["wall_time"] == "action acme.report"
    assert policy.resolve(None, "acme.export").sources["cpu_time"] == "action acme.*"
    assert policy.resolve(None, "std.echo@sandbox").sources["cpu_time"] == "action *"


def test_a_tenant_entry_falls_back_to_star_field_by_field(tmp_path):
    policy, _ = load(tmp_path, """
tenants:
  "*": {cpu_time: 5s, wall_time: 10s}
  "123": {cpu_time: 20s}
""")
    r = policy.resolve("123", "std.echo")
    assert (r.limits.cpu_time, r.sources["cpu_time"]) == (20, "tenant 123")
    assert (r.limits.wall_time, r.sources["wall_time"]) == (10, "tenant *")
    assert r.sources["file_size"] == "default"


def test_a_request_is_the_last_layer_and_clamps_are_noted_with_their_layer(tmp_path):
    policy, _ = load(tmp_path, 'tenants: {"*": {wall_time: 30s}}\n')
    effective, sources, notes = policy.apply("p", "std.echo",
                                             Limits.parse({"timeout": "5s", "cpu": "2m"}))
    assert effective.wall_time == 5 and sources["wall_time"] == "request"
    assert effective.cpu_time == 60 and sources["cpu_time"] == "default"
    assert notes == ["cpu_time: requested 120s, clamped to 60s (default)"]
    _, _, notes = policy.apply("p", "std.echo", Limits(wall_time=60))
    assert notes == ["wall_time: requested 60s, clamped to 30s (tenant *)"]


def test_ceiling_sources_tell_default_from_operator_values():
    ceiling = dataclasses.replace(DEFAULT_CEILING, wall_time=10)
    r = LimitsPolicy(ceiling, ceiling_sources=ceiling_sources(ceiling)).resolve(None, "x")
    assert r.sources["wall_time"] == "ceiling" and r.sources["cpu_time"] == "default"


def test_nested_is_denied_by_any_layer_and_allowed_by_default(tmp_path):
    policy, _ = load(tmp_path, """
tenants:
  closed: {nested: false}
actions:
  "*": {nested: false}
  std.echo: {nested: true}
""")
    assert policy.resolve("p", "std.echo").nested is True
    assert policy.resolve("p", "std.noop").nested is False
    assert policy.resolve("closed", "std.echo").nested is False
    assert policy.resolve("closed", "std.echo").sources["nested"] == "tenant closed"
    assert LimitsPolicy(DEFAULT_CEILING).resolve("p", "std.noop").nested is True


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("text, message", [
    ("tenants:\n  p1:\n    memroy: 1GiB\n",
     "tenants: p1: memroy: unknown key (did you mean 'memory'?)"),
    ("tenants:\n  p1:\n    memory: 12XB\n",
     "tenants: p1: memory: expected a size like 256MiB, 512K or 1GB, got '12XB'"),
    ("actions:\n  std.echo:\n    number_processes: 0\n",
     "actions: std.echo: number_processes: must be greater than 0 (no process can run with "
     "none), got 0"),
    ("actions:\n  std.echo:\n    wall_time: -2s\n",
     "actions: std.echo: wall_time: expected a duration like 2s, 500ms or 1.5m, got '-2s'"),
    ("actions:\n  std.echo:\n    wall_time: 0\n",
     "actions: std.echo: wall_time: must be a positive duration, got 0"),
    ("actions:\n  std.echo:\n    file_size: -1\n",
     "actions: std.echo: file_size: must not be negative, got -1"),
    ("actions:\n  std.echo:\n    network: maybe\n",
     "actions: std.echo: network: expected true or false, got 'maybe'"),
    ("actions:\n  std.echo:\n    nested: 1\n",
     "actions: std.echo: nested: expected true or false, got 1"),
    ("actions:\n  std.echo:\n    memory:\n",
     "actions: std.echo: memory: no value (remove the key to leave it unset)"),
    ("actions:\n  std.echo: 5\n", "actions: std.echo: expected a mapping of limits, got a number"),
    ("tenant:\n  p1: {}\n",
     "tenant: unknown section (did you mean 'tenants'?) (known: tenants, actions)"),
    ("- tenants\n", "expected a mapping with tenants and/or actions, got a list"),
    ("actions: [std.echo]\n",
     "actions: expected a mapping of action names or globs to entries, got a list"),
    ("tenants:\n  p1: {memory: 1GiB}\n  p1: {memory: 2GiB}\n",
     "line 3, column 3: malformed YAML: duplicate key 'p1'"),
    ("tenants:\n  p1: {memory: 1GiB\n",
     "line 3, column 1: malformed YAML: expected ',' or '}', but got '<stream end>'"),
])
def test_every_policy_error_names_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(PolicyFileError) as err:
        load(tmp_path, text)
    assert str(err.value) == "%s: %s" % (tmp_path / "policy.yaml", message)


def test_an_unreadable_or_missing_file_is_named(tmp_path):
    with pytest.raises(PolicyFileError) as err:
        LimitsPolicy.load(str(tmp_path / "nope.yaml"), DEFAULT_CEILING)
    assert str(err.value) == "cannot read policy file %s: No such file or directory" % (
        tmp_path / "nope.yaml")
    if os.geteuid() != 0:  # (root reads any file)
        path = tmp_path / "secret.yaml"
        path.write_text("{}")
        path.chmod(0)
        with pytest.raises(PolicyFileError, match="Permission denied"):
            LimitsPolicy.load(str(path), DEFAULT_CEILING)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe tenants")
    with pytest.raises(PolicyFileError, match="bin.yaml: not UTF-8 text"):
        LimitsPolicy.load(str(tmp_path / "bin.yaml"), DEFAULT_CEILING)


def test_an_action_pattern_matching_no_installed_action_is_a_warning(tmp_path):
    policy, path = load(tmp_path, """
actions:
  "acme.*": {cpu: 1s}
  "acme.reprot": {cpu: 1s}
  "nothing.*": {cpu: 1s}
  "pkg.mod:Class": {cpu: 1s}
""")
    assert policy.warnings == [
        "%s: actions: acme.reprot: matches no installed action" % path,
        "%s: actions: nothing.*: matches no installed action" % path]


def test_an_empty_file_is_an_empty_policy(tmp_path):
    policy, _ = load(tmp_path, "# nothing yet\n")
    assert policy.resolve("p", "std.echo").limits == DEFAULT_CEILING


def test_limits_refuse_zero_where_no_process_could_run():
    with pytest.raises(LimitError, match="limit .files.: must be greater than 0"):
        Limits.parse({"files": 0})
    assert Limits.parse({"nested_calls": 0, "core_file_size": 0}).nested_calls == 0
