"""render.yaml: both Neon URLs asked for, the API token generated, the handler shown, and every variable it sets
documented in the README's configuration table."""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # schemathesis brings PyYAML into the dev environment

ROOT = Path(__file__).resolve().parents[2]


def test_the_blueprint_asks_for_both_urls_generates_the_token_and_names_the_handler() -> None:
    service = yaml.safe_load((ROOT / "render.yaml").read_text())["services"][0]
    env = {e["key"]: e for e in service["envVars"]}
    assert env["DATABASE_URL"] == {"key": "DATABASE_URL", "sync": False}
    assert env["DATABASE_DIRECT_URL"] == {"key": "DATABASE_DIRECT_URL", "sync": False}
    assert env["DATESYNC_API_TOKEN"]["generateValue"] is True
    assert "DATESYNC_HANDLER" in env and "DATESYNC_RETENTION" in env
    table = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)`", table, re.MULTILINE))
    assert set(env) <= documented, set(env) - documented
