"""datesync as a dependency of a user's project: the built wheel installed into a fresh virtual environment, next
to the user's own modules named `web` and `daemon` (common names in an application), and the user's handler run
by `datesync daemon` from that project. The wheel claims the import name `datesync` alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_image_install import sync_one_date

ROOT = Path(__file__).resolve().parents[2]

HANDLER = '''
import datetime

import daemon  # the project's own modules, not datesync's
import web

import datesync


async def sync(day: datetime.date, ctx: datesync.SyncContext) -> int:
    await ctx.db.execute("CREATE TABLE IF NOT EXISTS weather (day date PRIMARY KEY, note text)")
    await ctx.db.execute("INSERT INTO weather VALUES ($1, $2) ON CONFLICT (day) DO UPDATE SET note = $2",
                         day, web.GREETING + " / " + daemon.NAME)
    return 1
'''


def build_and_install(tmp_path: Path) -> tuple[Path, Path]:
    """The wheel built from this checkout, installed (with its dependencies) into tmp_path/venv; a project folder
    with the user's web.py, daemon.py and handlers.py."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    [wheel] = wheels.glob("datesync-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist() if not name.split("/")[0].endswith(".dist-info")}
        top_level = z.read(next(n for n in z.namelist() if n.endswith("top_level.txt"))).decode().split()
    assert tops == {"datesync"} and top_level == ["datesync"], (tops, top_level)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           str(wheel)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    project = tmp_path / "project"
    project.mkdir()
    (project / "web.py").write_text('GREETING = "the project\'s own web module"\n')
    (project / "daemon.py").write_text('NAME = "and its own daemon module"\n')
    (project / "handlers.py").write_text(HANDLER)
    return venv, project


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_wheel_runs_a_projects_handler_beside_its_own_web_and_daemon_modules(
        tmp_path: Path, dsn: str) -> None:
    venv, project = await asyncio.to_thread(build_and_install, tmp_path)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": dsn,
           "LOG_FORMAT": "json", "DATESYNC_HANDLER": "handlers:sync", "DATESYNC_POLL_INTERVAL": "1"}
    log = tmp_path / "daemon.log"
    assert await sync_one_date(venv, project, env, dsn, log) == ["succeeded"], log.read_text()[-3000:]
    db = await asyncpg.connect(dsn)
    try:
        assert await db.fetchval("SELECT note FROM weather WHERE day = '2024-05-01'") == (
            "the project's own web module / and its own daemon module")
    finally:
        await db.close()
