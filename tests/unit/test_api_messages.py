# ruff: noqa: RUF001  (Chinese punctuation and full-width digits are meant)
"""Languages, the envelope, the token check and the last-resort guard, without a database."""

from __future__ import annotations

import re
import string
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from datesync.daemon.ops.messages import MESSAGES, preferred, text
from datesync.daemon.ops.problems import OperationError, problem
from datesync.web.api import EXCEPTION_HANDLERS
from datesync.web.api.auth import token_matches
from datesync.web.api.envelope import Envelope
from datesync.web.api.errors import Guard
from datesync.web.api.middleware import BodyLimit


@pytest.mark.parametrize(("header", "lang"), [
    (None, "en"), ("", "en"), ("zh", "zh"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh"), ("en-US,en;q=0.9,zh;q=0.8", "en"),
    ("en;q=0.5, zh-TW;q=0.8", "zh"), ("zh;q=0, en", "en"), ("zhx", "en"), ("*", "en"), ("ZH-hans", "zh"),
    ("zh;q=abc,en;q=0.1", "en"), ("fr, zh", "en"),
])
def test_accept_language_prefers_chinese_only_when_it_ranks_first(header: str | None, lang: str) -> None:
    assert preferred(header) == lang


def test_every_message_has_both_languages_with_the_same_placeholders() -> None:
    names = string.Formatter()
    for key, (english, chinese) in MESSAGES.items():
        assert chinese and english, key
        assert {f for _, f, _, _ in names.parse(english) if f} == {f for _, f, _, _ in names.parse(chinese) if f}, key
        if key != "verbatim":
            assert re.search(r"[\u4e00-\u9fff]", chinese), key


def test_the_contract_wording() -> None:
    assert text("en", "batch_started", days=9) == "Batch sync started: 9 days will be synced"
    assert text("zh", "batch_started", days=9) == "批量同步任务已启动，将同步 9 天的数据"


def test_error_bodies_name_fields_and_escape_what_utf8_cannot_hold() -> None:
    error = OperationError(422, [problem("start_date", "field_required", field="start_date")])
    assert error.body("en") == {"status": "error", "message": "start_date is required",
                                "errors": [{"field": "start_date", "message": "start_date is required"}]}
    rendered = Envelope({"status": "error", "message": "bad \ud800 text"}).body
    assert b"\\ud800" in rendered


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer  s3cret ", True), ("Bearer s3cre", False),
    ("Basic s3cret", False), ("s3cret", False), (None, False), ("Bearer s3cret\u00e9", False), ("Bearer ", False),
])
def test_token_is_compared_as_a_bearer_credential(header: str | None, ok: bool) -> None:
    assert token_matches("s3cret", header) is ok


def _app() -> Starlette:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret detail /home/x.py line 3")

    async def gone(request: Request) -> Response:
        raise ConnectionRefusedError("db down")

    async def echo(request: Request) -> Response:
        return Response(str(len(await request.body())))

    return Starlette(routes=[Route("/boom", boom), Route("/gone", gone), Route("/echo", echo, methods=["POST"])],
                     middleware=[Middleware(Guard), Middleware(BodyLimit, limit=10)],
                     exception_handlers=EXCEPTION_HANDLERS)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://test")


async def test_an_unexpected_error_is_a_logged_500_envelope_without_details() -> None:
    with capture_logs() as logs:
        async with client() as http:
            answer = await http.get("/boom", headers={"Accept-Language": "zh"})
            assert answer.status_code == 500
            assert answer.json() == {"status": "error", "message": "服务器内部错误，详情见服务器日志", "errors": []}
            assert "secret" not in answer.text
            assert (await http.get("/gone")).status_code == 503
    assert [e["event"] for e in logs] == ["api_unhandled_error", "api_unhandled_error"]


async def test_the_body_limit_applies_to_declared_and_streamed_bodies() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"012345"
        yield b"6789ab"

    async with client() as http:
        assert (await http.post("/echo", content=b"0123456789")).text == "10"
        assert (await http.post("/echo", content=b"0123456789a")).status_code == 413
        streamed = await http.post("/echo", content=chunks())
        assert streamed.status_code == 413
        assert streamed.json()["errors"] == [{"field": "body", "message": "the request body is larger than 10 bytes"}]
