import pytest

from mistral_sandbox import cli


def test_params_parse_json_values_and_strings():
    assert cli.parse_params(["a=1", "b=hello", "c={\"x\": [1]}", "d="], None) == {
        "a": 1, "b": "hello", "c": {"x": [1]}, "d": ""}


def test_params_json_and_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"output": [1, 2]}')
    assert cli.parse_params([], "@%s" % f) == {"output": [1, 2]}
    assert cli.parse_params(["x=2"], '{"x": 1, "y": 3}') == {"x": 2, "y": 3}


@pytest.mark.parametrize("pairs,js,match", [
    (["novalue"], None, "expected NAME=VALUE"),
    (["=3"], None, "expected NAME=VALUE"),
    ([], "[1]", "expected a JSON object"),
    ([], "{bad", "invalid JSON"),
    ([], "@/nonexistent/file.json", "cannot read"),
])
def test_bad_params(pairs, js, match):
    with pytest.raises(cli.UsageError, match=match):
        cli.parse_params(pairs, js)


def test_limits_parse_and_errors():
    lim = cli.parse_limits(["memory=256MiB", "timeout=2s"])
    assert lim.address_space == 256 * 2 ** 20 and lim.wall_time == 2
    with pytest.raises(cli.UsageError, match="limit 'memory'.*'lots'"):
        cli.parse_limits(["memory=lots"])
    with pytest.raises(cli.UsageError, match="expected NAME=VALUE"):
        cli.parse_limits(["memory"])
    with pytest.raises(cli.UsageError, match="unknown limit 'speed'"):
        cli.parse_limits(["speed=3"])


def test_bench_refuses_a_negative_warm_pool_before_measuring(capsys):
    assert cli.main(["bench", "--warm", "-1", "--out", ""]) == cli.EXIT_USAGE
    assert "--warm: the warm pool size must be >= 0, got -1" in capsys.readouterr().err


def test_context_from_a_file_keeps_the_token_off_the_command_line(tmp_path):
    f = tmp_path / "ctx.json"
    f.write_text('{"security": {"auth_token": "tok-123", "project_id": "p"}}')
    assert cli.parse_context("@%s" % f) == {"security": {"auth_token": "tok-123",
                                                         "project_id": "p"}}
    with pytest.raises(cli.UsageError, match="--context-json: cannot read /nonexistent"):
        cli.parse_context("@/nonexistent/ctx.json")
    f.write_text('{"security": {"tokn": "x"}}')
    with pytest.raises(cli.UsageError, match=r"unknown security context field\(s\): tokn"):
        cli.parse_context("@%s" % f)
