"""User mistakes end a command line in one line, exit 2; other exceptions keep their traceback."""
import pytest

from ssl_crops.cli import user_errors


def test_listed_exceptions_become_one_error_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        with user_errors(FileNotFoundError, ValueError, prog="tool.py"):
            raise ValueError("ann.json: not a COCO detection json")
    assert e.value.code == 2 and e.value.__cause__ is None and e.value.__suppress_context__
    assert capsys.readouterr().err == "tool.py: error: ann.json: not a COCO detection json\n"
    with pytest.raises(SystemExit):
        with user_errors(OSError):
            raise FileNotFoundError("x.pth: checkpoint not found")   # a subclass counts
    assert capsys.readouterr().err == "error: x.pth: checkpoint not found\n"


def test_other_exceptions_are_bugs_and_pass_through(capsys):
    with pytest.raises(KeyError):
        with user_errors(ValueError):
            raise KeyError("bug")
    with user_errors(ValueError):
        pass
    assert capsys.readouterr().err == ""


def test_plain_warnings_are_one_line_without_the_source_echo():
    import warnings

    from ssl_crops.cli import plain_warnings

    before = warnings.formatwarning
    try:
        plain_warnings()
        line = warnings.formatwarning("12 of 40 images are not in DIR", UserWarning, "inputs.py", 80, "warn(...)")
    finally:
        warnings.formatwarning = before
    assert line == "warning: 12 of 40 images are not in DIR\n"  # no file, line number nor source line
