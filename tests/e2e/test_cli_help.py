"""The CLI as a newcomer meets it: every --help keeps its text, names arguments alike and tells the exit codes that
the commands really use; `datesync psql` passes psql's own arguments through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datesync.daemon.embedded import bin_dir

DATESYNC = str(Path(sys.executable).with_name("datesync"))
COMMANDS = ["run", "daemon", "web", "migrate", "batch", "watch", "status", "gaps", "retry", "cancel", "bench", "psql"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([DATESYNC, *args], capture_output=True, text=True, env=full, timeout=60, check=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_keeps_its_text_and_shows_no_type_noise(command: str) -> None:
    shown = cli(command, "--help")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "<bool>" not in text  # a flag takes no value
    assert "Usage: datesync " + command in text
    # Argument names are written alike (upper case) in the usage line and the argument list.
    usage = text.splitlines()[0]
    assert usage == usage.replace("{start}", "").replace("{batch_id}", ""), usage


def test_env_and_defaults_in_brackets_survive() -> None:
    text = cli("run", "--help").stdout
    assert "[env: PORT, default 8000]" in text
    assert "[env: DATESYNC_CONCURRENCY, default" in text


def test_the_exit_codes_are_documented_once_and_match_the_commands() -> None:
    top = cli("--help").stdout
    assert "Exit codes: 0 done; 1 the followed batch ended failed or cancelled" in top
    assert "1 if it failed or was cancelled" in " ".join(cli("watch", "--help").stdout.split())
    assert "cancelled ones" in " ".join(cli("retry", "--help").stdout.split())


def test_psql_passes_its_arguments_through(dsn: str) -> None:
    env = {"DATABASE_URL": dsn, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
    shown = cli("psql", "-At", "-c", "SELECT 40 + 2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "42"
