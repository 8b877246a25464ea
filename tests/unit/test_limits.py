import pytest

from mistral_sandbox.runner.limits import (DEFAULT_CEILING, LimitError, Limits, clamp, merge,
                                           parse_duration, parse_size)


@pytest.mark.parametrize("text,expected", [
    ("256MiB", 256 * 2 ** 20), ("256M", 256 * 2 ** 20), ("1GB", 10 ** 9), ("512k", 512 * 1024),
    ("1.5GiB", int(1.5 * 2 ** 30)), ("1024", 1024), (4096, 4096), ("0", 0), (" 2 mb ", 2 * 10 ** 6),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1", "12XB", "", True, float("inf"), "1.2.3M"])
def test_parse_size_rejects(text):
    with pytest.raises(LimitError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("text,expected", [
    ("2s", 2.0), ("500ms", 0.5), ("1.5m", 90.0), ("30", 30.0), (5, 5.0), ("1h", 3600.0),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["soon", "0", "-2s", "2 parsecs", False])
def test_parse_duration_rejects(text):
    with pytest.raises(LimitError):
        parse_duration(text)


def test_parse_with_aliases():
    lim = Limits.parse({"memory": "256MiB", "timeout": "2s", "cpu": "1s", "procs": 10,
                        "files": "32", "network": "false"})
    assert lim.address_space == lim.resident_set_size == 256 * 2 ** 20
    assert lim.wall_time == 2.0 and lim.cpu_time == 1.0
    assert lim.number_processes == 10 and lim.number_files == 32
    assert lim.network is False


def test_parse_names_bad_key_and_value():
    with pytest.raises(LimitError, match="unknown limit 'memroy'.*known:.*memory"):
        Limits.parse({"memroy": "1G"})
    with pytest.raises(LimitError, match="limit 'memory'.*'lots'"):
        Limits.parse({"memory": "lots"})
    with pytest.raises(LimitError, match="non-negative integer"):
        Limits.parse({"procs": "many"})
    with pytest.raises(LimitError, match="true or false"):
        Limits.parse({"network": "maybe"})


def test_dataclass_validates_direct_values():
    with pytest.raises(LimitError):
        Limits(wall_time=-1)
    assert Limits(address_space="1MiB").address_space == 2 ** 20


def test_merge_is_fieldwise_minimum_and_monotone():
    a = Limits(wall_time=10, address_space=2 ** 30, network=True)
    b = Limits(wall_time=5, cpu_time=3, network=True)
    c = Limits(address_space=2 ** 20, network=False)
    m = merge(a, b, None, c)
    assert m.wall_time == 5 and m.cpu_time == 3 and m.address_space == 2 ** 20
    assert m.network is False
    # adding a layer never loosens anything
    for layer in (Limits(wall_time=100), Limits(network=True), Limits()):
        m2 = merge(m, layer)
        assert m2.wall_time <= m.wall_time and m2.network is False


def test_clamp_reports_requests_above_the_ceiling():
    ceiling = Limits(wall_time=5, address_space=2 ** 30)
    eff, notes = clamp(ceiling, Limits(wall_time=10, address_space=2 ** 20))
    assert eff.wall_time == 5 and eff.address_space == 2 ** 20
    assert notes == ["wall_time: requested 10s, clamped to 5s"]


def test_to_dict_human_and_round_trip():
    lim = Limits(address_space=256 * 2 ** 20, wall_time=0.5, number_files=8)
    assert lim.to_dict(human=True) == {"address_space": "256MiB", "wall_time": "500ms",
                                       "number_files": 8}
    assert Limits.parse(lim.to_dict(human=True)) == lim
    assert Limits.parse(lim.to_dict()) == lim


def test_default_ceiling_is_safe():
    assert DEFAULT_CEILING.network is False
    assert DEFAULT_CEILING.wall_time and DEFAULT_CEILING.address_space
    assert DEFAULT_CEILING.number_processes and DEFAULT_CEILING.core_file_size == 0
