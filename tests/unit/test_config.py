"""The [sandbox] options: the generated sample, reading a file, errors that name the option."""

import dataclasses
import os
import subprocess
import sys

import pytest

from mistral_sandbox import config
from mistral_sandbox.runner.limits import DEFAULT_CEILING, FIELD_NAMES, LimitError
from mistral_sandbox.runner.settings import SandboxSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "etc", "mistral-sandbox.conf.sample")


def write(tmp_path, text):
    path = tmp_path / "sandbox.conf"
    path.write_text(text)
    return str(path)


def test_the_generator_writes_the_committed_sample(tmp_path):
    # the installed console script, through the oslo.config.opts entry point
    generator = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
    out = tmp_path / "sample.conf"
    subprocess.run([generator, "--namespace", "mistral_sandbox", "--wrap-width", "79",
                    "--output-file", str(out)], check=True, capture_output=True, timeout=60)
    generated = out.read_text()
    assert "\n[sandbox]\n" in generated
    for name in FIELD_NAMES + ("policy_file", "max_workers", "isolation", "uid_start"):
        assert "\n#%s =" % name in generated
    with open(SAMPLE) as f:
        assert generated == f.read(), "etc/mistral-sandbox.conf.sample is stale: run " \
                                      "`tox -e genconfig`"


def test_defaults_are_the_built_in_settings():
    settings = config.settings_from(config.load())
    assert settings == SandboxSettings(uid_lock_dir=settings.uid_lock_dir)
    assert settings.ceiling == DEFAULT_CEILING


def test_a_file_sets_the_ceiling_and_the_runner(tmp_path):
    conf = config.load([write(tmp_path, """
[sandbox]
max_workers = 7
warm = 2
isolation = pid_ns:off,seccomp:best_effort
wall_time = 5m
address_space = 2GiB
data_size = 512MiB
number_files = unlimited
network = true
scratch_size = none
policy_file = policy.yaml
preload = json,decimal
""")])
    s = config.settings_from(conf)
    assert (s.max_workers, s.warm, s.scratch_size) == (7, 2, None)
    assert s.isolation["pid_ns"] == "off" and s.isolation["seccomp"] == "best_effort"
    assert s.ceiling == dataclasses.replace(DEFAULT_CEILING, wall_time=300.0,
                                            address_space=2 * 2 ** 30, data_size=2 ** 29,
                                            number_files=None, network=True)
    assert s.policy_file == os.path.abspath("policy.yaml")
    assert s.preload == ("json", "decimal")


@pytest.mark.parametrize("text, error, message", [
    ("[sandbox]\naddress_space = 12XB\n", LimitError,
     "[sandbox] address_space: expected a size like 256MiB, 512K or 1GB, got '12XB'"),
    ("[sandbox]\nnumber_processes = 0\n", LimitError,
     "[sandbox] number_processes: must be greater than 0 (no process can run with none), "
     "got '0'"),
    ("[sandbox]\nisolation = pid_ns:sometimes\n", ValueError,
     "[sandbox] isolation step pid_ns: level must be required, best_effort or off, got "
     "'sometimes'"),
    ("[sandbox]\nmax_workers = 0\n", ValueError,
     "[sandbox] max_workers (%(file)s): Should be greater than or equal to 1"),
    ("[sandbox]\nscratch_size = 1K\n", LimitError,
     "[sandbox] scratch_size: at least 65536 bytes"),
])
def test_a_bad_option_is_named(tmp_path, text, error, message):
    conf = config.load([write(tmp_path, text)])
    with pytest.raises(error) as err:
        config.settings_from(conf)
    assert str(err.value).startswith(message % {"file": tmp_path / "sandbox.conf"})


def test_a_missing_or_malformed_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="Failed to find some config files: .*nope.conf"):
        config.load([str(tmp_path / "nope.conf")])
    with pytest.raises(ValueError, match="sandbox.conf"):
        config.load([write(tmp_path, "[sandbox\nmax_workers = 2\n")])
