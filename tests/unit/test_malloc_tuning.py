"""limit_malloc_arenas: applied on glibc Linux, never against the user's own setting."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from guardian.malloc_tuning import limit_malloc_arenas

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _fresh(env: dict[str, str]) -> str:
    code = "from guardian.malloc_tuning import limit_malloc_arenas; print(limit_malloc_arenas())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt(M_ARENA_MAX) is glibc's")
def test_applied_in_a_fresh_process_on_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _fresh(env) == "True"


def test_the_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    assert _fresh(dict(os.environ)) == "False"
