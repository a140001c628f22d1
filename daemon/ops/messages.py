# ruff: noqa: RUF001  (Chinese punctuation is meant)
"""Messages in English (the default) and Chinese (when Accept-Language prefers zh). Field names stay English."""

from __future__ import annotations

from typing import Literal

Lang = Literal["en", "zh"]

# key: (English, Chinese). The validation wording matches datesync.batch_validate() in the schema, so a psql
# INSERT and an API request are refused with the same sentence.
MESSAGES: dict[str, tuple[str, str]] = {
    # success
    "batch_started": ("Batch sync started: {days} days will be synced", "批量同步任务已启动，将同步 {days} 天的数据"),
    "batch_duplicate": (
        "An identical batch is already queued or running: {days} days will be synced",
        "相同的批量同步任务已在排队或运行中，将同步 {days} 天的数据",
    ),
    "batch_replayed": (
        "This request was already accepted as batch {id} ({days} days)",
        "该请求已被受理为批量任务 {id}（{days} 天）",
    ),
    "dry_run": (
        "Dry run: {run} of {days} days would be synced, {skip} skipped as already synced",
        "试运行：{days} 天中将同步 {run} 天，跳过 {skip} 天（已同步）",
    ),
    "cancel_requested": ("Cancel requested for batch {id}", "已请求取消批量任务 {id}"),
    "retry_started": (
        "Batch {id} requeued: {requeued} days will be retried",
        "批量任务 {id} 已重新排队，将重试 {requeued} 天的数据",
    ),
    # request body
    "body_empty": ("the request body is empty; send a JSON object", "请求体为空，请发送一个 JSON 对象"),
    "body_not_utf8": ("the request body is not UTF-8 text", "请求体不是 UTF-8 文本"),
    "body_invalid_json": (
        "the request body is not valid JSON (line {line}, column {column})",
        "请求体不是有效的 JSON（第 {line} 行，第 {column} 列）",
    ),
    "body_unreadable_json": ("the request body is not valid JSON", "请求体不是有效的 JSON"),
    "body_not_object": (
        "the request body must be a JSON object, not {kind}",
        "请求体必须是 JSON 对象，而不是 {kind}",
    ),
    "body_too_large": ("the request body is larger than {limit} bytes", "请求体超过 {limit} 字节"),
    "field_duplicate": ("{field} appears more than once", "字段 {field} 出现了多次"),
    "field_unknown": ('unknown field "{field}" (allowed: {allowed})', '未知字段 "{field}"（允许的字段：{allowed}）'),
    "field_required": ("{field} is required", "{field} 为必填项"),
    "field_boolean": ("{field} must be true or false", "{field} 必须是 true 或 false"),
    "date_format": (
        "{field} must be a date written YYYY-MM-DD, such as 2025-10-01",
        "{field} 必须是 YYYY-MM-DD 格式的日期，例如 2025-10-01",
    ),
    "date_impossible": ("{field} {value} is not a real calendar date", "{field} {value} 不是真实存在的日期"),
    "date_too_early": ("{field} must not be before {min}", "{field} 不能早于 {min}"),
    "start_after_end": ("start_date must not be after end_date", "start_date 不能晚于 end_date"),
    "range_too_long": (
        "the range is {days} days; the limit is {limit} days",
        "日期范围为 {days} 天，上限为 {limit} 天",
    ),
    "date_future": (
        "end_date {value} is in the future (today is {today} in {zone})",
        "end_date {value} 是未来的日期（{zone} 时区的今天是 {today}）",
    ),
    "range_future": (
        "{field} {value} is in the future (today is {today} in {zone})",
        "{field} {value} 是未来的日期（{zone} 时区的今天是 {today}）",
    ),
    "source_type": ("source must be a string naming a configured source", "source 必须是字符串，表示已配置的数据源"),
    "source_unknown": ('unknown source "{value}"', '未知的数据源 "{value}"'),
    "idempotency_key": (
        "Idempotency-Key must be 1 to 255 printable ASCII characters",
        "Idempotency-Key 必须是 1 到 255 个可打印的 ASCII 字符",
    ),
    "idempotency_key_reused": (
        "Idempotency-Key {value} was already used for batch {id} with another body; use a new key for another request",
        "Idempotency-Key {value} 已用于另一请求体的批量任务 {id}；不同的请求请使用新的键",
    ),
    # query parameters
    "param_int": ("{field} must be a whole number from {low} to {high}", "{field} 必须是 {low} 到 {high} 之间的整数"),
    "param_choice": ("{field} must be one of: {choices}", "{field} 必须是以下之一：{choices}"),
    "param_from_after_to": ("from must not be after to", "from 不能晚于 to"),
    # batches
    "batch_not_found": ("no batch with id {id}", "不存在 id 为 {id} 的批量任务"),
    "batch_ended": (
        "batch {id} has already ended ({state}); there is nothing to cancel",
        "批量任务 {id} 已结束（{state}），无法取消",
    ),
    "retry_unfinished": (
        "batch {id} is still {state}; retry it after it ends",
        "批量任务 {id} 尚未结束（{state}），请在其结束后再重试",
    ),
    "retry_nothing": (
        "batch {id} has nothing to retry: none of its dates failed or was cancelled",
        "批量任务 {id} 没有可重试的日期：没有失败或被取消的日期",
    ),
    # auth, routing, server
    "unauthorized": (
        "missing or wrong API token: send Authorization: Bearer <token>",
        "缺少 API 令牌或令牌错误：请发送 Authorization: Bearer <token>",
    ),
    "cross_site": (
        "a browser sent this request from another site ({origin}); add that origin to DATESYNC_CORS_ORIGINS to "
        "allow it",
        "该请求由浏览器从其他站点（{origin}）发出；如需允许，请将该来源加入 DATESYNC_CORS_ORIGINS",
    ),
    "host_not_allowed": (
        "this server does not answer to the Host {host}; add that name to DATESYNC_ALLOWED_HOSTS to allow it",
        "本服务不接受 Host {host}；如需允许，请将该名称加入 DATESYNC_ALLOWED_HOSTS",
    ),
    "host_missing": ("the request has no Host header", "请求缺少 Host 请求头"),
    "route_not_found": ("no such endpoint: {method} {path}", "不存在该接口：{method} {path}"),
    "method_not_allowed": ("{method} is not allowed on {path}", "{path} 不支持 {method} 方法"),
    "http_error": ("the request failed ({status})", "请求失败（{status}）"),
    "database_unavailable": (
        "the database is unavailable; try again shortly",
        "数据库暂时不可用，请稍后再试",
    ),
    "internal_error": (
        "internal error; the details are in the server log",
        "服务器内部错误，详情见服务器日志",
    ),
    # text passed through as is (the database's own wording, as a backstop)
    "verbatim": ("{text}", "{text}"),
}


def text(lang: Lang, key: str, **params: object) -> str:
    """The message `key` in `lang`, filled in."""
    english, chinese = MESSAGES[key]
    return (chinese if lang == "zh" else english).format(**params)


def preferred(accept_language: str | None) -> Lang:
    """`zh` when the Accept-Language header's most preferred acceptable language is Chinese, else `en`."""
    best: tuple[float, Lang] | None = None
    for item in (accept_language or "").split(","):
        tag, _, rest = item.strip().partition(";")
        tag = tag.strip().lower()
        if not tag:
            continue
        weight = 1.0
        for param in rest.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if not 0 < weight <= 1:
            continue
        lang: Lang = "zh" if tag == "zh" or tag.startswith("zh-") else "en"
        if best is None or weight > best[0]:  # the first of equal weights wins
            best = (weight, lang)
    return best[1] if best else "en"
