"""The minimal file system view keeps what actions need, and nothing of the host is
written while it is built."""

import os
import sys

import pytest

from mistral_sandbox.runner import view

ROOT = os.geteuid() == 0


def test_an_action_can_use_asyncio_threads_a_python_subprocess_and_tempfiles(sandbox):
    out = sandbox.run("sample_actions:UsesTheRuntime")
    assert out.exit_reason == "ok", out.message
    first, second, child, temp_dir = out.result.data
    assert [first, second] == ["asyncio", "thread"]
    in_venv = sys.prefix != sys.base_prefix
    assert child[0] == 0, child[2]
    assert child[1] == "%s msgpack" % (not in_venv)  # the environment's packages seen
    assert temp_dir == sandbox.scratch_view or temp_dir.startswith(sandbox.scratch_view)


def test_the_interpreter_is_bound_with_its_links(tmp_path):
    """A link chain to the interpreter is kept as links; the file it leads to and a
    virtual environment's pyvenv.cfg are bound."""
    real = tmp_path / "real" / "python3.11"
    real.parent.mkdir()
    real.write_text("")
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = x\n")
    os.symlink("python3.11", str(tmp_path / "real" / "python3"))
    os.symlink(str(tmp_path / "real" / "python3"), str(tmp_path / "env" / "bin" / "python"))
    files, links = view.interpreter(str(tmp_path / "env" / "bin" / "python"),
                                    str(tmp_path / "env"))
    assert files == [str(real), str(tmp_path / "env" / "pyvenv.cfg")]
    assert links == [(str(tmp_path / "env" / "bin" / "python"), str(tmp_path / "real" /
                                                                    "python3")),
                     (str(tmp_path / "real" / "python3"), "python3.11")]


def test_files_inside_a_bound_directory_are_left_to_the_bind():
    """Binding a file inside a bound directory would first create (truncate) it through
    the bind: in the host's directory."""
    layout = view.plan(view.module_path() + [os.path.dirname(os.path.realpath(
        sys.executable))], False)
    assert os.path.realpath(sys.executable) not in layout["files"]
    for path in layout["files"]:
        assert not any(path.startswith(d + "/") for d in layout["dirs"]), path


@pytest.mark.skipif(not ROOT, reason="the minimal view is built as root only")
def test_the_view_is_minimal(sandbox):
    assert sandbox.zygote_info["view"] == "minimal"
