"""`kubekvm sign-in check` as a sysadmin runs it, in the test's own process: the same command line
(`kubekvm.cli.main`, the console script's entry point), environment, output and exit status,
without a second Python importing the whole server (seconds of CPU a run)."""

from __future__ import annotations

import contextlib
import io
import os
from unittest import mock

import pytest

from kubekvm.cli import main


def sign_in_check(settings: dict[str, str], *args: str) -> tuple[int, str]:
    """The exit status and the output of `kubekvm sign-in check *args` with `settings` added to
    the environment (restored after)."""
    shown = io.StringIO()
    with mock.patch.dict(os.environ, settings), contextlib.redirect_stdout(shown), \
            pytest.raises(SystemExit) as ended:
        main(["sign-in", "check", *args])
    code = ended.value.code
    assert isinstance(code, int), code
    return code, shown.getvalue()
