"""The README's walk-through, command by command, against a live `datesync run`: each answer is the one the README
says it is, on today's clock (its dates are relative to today, so the calendar shows them)."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
from pathlib import Path

import pytest

from tests.support.daemons import ROOT
from tests.support.server import free_port
from tests.support.service import DATESYNC, datesync_run

README = ROOT / "README.md"


def walkthrough() -> list[str]:
    """The commands of the README's walk-through block, continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- walkthrough:start")[1].split("<!-- walkthrough:end -->")[0]
    body = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line[:-1] if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def script(commands: list[str], port: int) -> str:
    """One bash script running every command, each output fenced by markers with its exit code."""
    lines = ["set -u"]
    for i, command in enumerate(commands):
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(".venv/bin/datesync",
                                                                                 str(DATESYNC))
        lines += [f"echo '::step {i}::'", command, f"echo \"::exit {i} $?::\""]
    return "\n".join(lines) + "\n"


def steps(output: str) -> dict[int, tuple[int, str]]:
    found = {}
    for match in re.finditer(r"::step (\d+)::\n(.*?)::exit \1 (\d+)::", output, re.DOTALL):
        found[int(match.group(1))] = (int(match.group(3)), match.group(2))
    return found


async def test_the_readme_walkthrough_answers_as_written(dsn: str, tmp_path: Path) -> None:
    commands = walkthrough()
    assert any("sync/batch" in c for c in commands) and any("--follow" in c for c in commands)
    today = datetime.datetime.now(datetime.UTC).date()
    failing = (today - datetime.timedelta(days=5)).isoformat()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "PORT": str(port), "TZ": "UTC", "LOG_FORMAT": "json",
           "DATESYNC_DEMO_FAIL_DATES": failing, "DATESYNC_DEMO_DELAY_MS": "100", "DATESYNC_RETRY_DELAY": "0.2",
           "COLUMNS": "200"}
    env.pop("DATESYNC_URL", None)
    async with datesync_run(env, tmp_path / "server.log"):
        shell = await asyncio.create_subprocess_exec("bash", "-c", script(commands, port), env=env, cwd=ROOT,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(shell.communicate(), 240)
    out = steps(stdout.decode())
    assert len(out) == len(commands), stdout.decode() + stderr.decode()

    def answer(fragment: str, nth: int = 0) -> tuple[int, str]:
        found = [out[i] for i, c in enumerate(commands) if fragment in c]
        assert found, fragment
        return found[nth]

    code, text = answer('echo "batch $ID"')
    assert code == 0 and re.fullmatch(r"batch \d+\n", text), text
    code, text = answer("/events")
    assert code == 0 and "event: snapshot" in text, text
    assert re.search(r'"state": ?"failed"', text) and re.search(r'"final": ?true', text), text
    code, text = answer("curl -s $API/batches/$ID")
    assert '"state":"failed"' in text and '"succeeded":8' in text and '"failed":1' in text, text
    assert f"demo upstream has no data for {failing}" in text
    code, text = answer('"$API/?from=')
    assert '"status":"success"' in text and f'"day":"{failing}"' in text, text
    code, text = answer("/gaps?from=")
    assert text.count('"status":"missing"') == 21 and f'{{"day":"{failing}","status":"failed"}}' in text, text
    code, text = answer("/retry")
    assert '"requeued":1' in text, text
    code, text = answer("/cancel")
    assert "Cancel requested for batch" in text, text
    code, text = answer("--follow")
    assert code == 1, text  # a date failed: the documented exit code
    assert "1 failed" in text and failing in text, text
    code, text = answer("datesync status")
    assert code == 0 and failing in text and "success" in text, text
    code, text = answer("--backfill")
    assert code == 0 and "requested" in text, text


@pytest.mark.parametrize("needle", ["date -d", "macOS"])
def test_the_walkthrough_uses_dates_relative_to_today(needle: str) -> None:
    text = README.read_text(encoding="utf-8")
    assert needle in text.split("<!-- walkthrough:end -->")[0]
    assert not re.search(r"datesync (batch|gaps|status).*20\d\d-\d\d-\d\d", "\n".join(walkthrough()))
