"""Messages in English (the default) and Chinese (when Accept-Language prefers zh), kept in messages.toml. Field
names stay English."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

Lang = Literal["en", "zh"]

# key: (English, Chinese), from the catalog beside this module.
MESSAGES: dict[str, tuple[str, str]] = {
    key: (entry["en"], entry["zh"])
    for key, entry in tomllib.loads((Path(__file__).parent / "messages.toml").read_text(encoding="utf-8")).items()
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
