"""A stand-in for an upstream orders API, for the README's worked example: `python orders_api.py [PORT]`.

GET /orders?day=2026-03-01 answers that day's orders as a JSON list, the same every time for the same day (seeded
by the date), as `[{"id": "2026-03-01-1", "region": "north", "amount": 12.5}, ...]`; GET /orders?day=... for a day
listed in ORDERS_API_DOWN answers 503, to watch a failure run down to the roll-up.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REGIONS = ("north", "south", "east", "west")
DOWN = {d.strip() for d in os.environ.get("ORDERS_API_DOWN", "").split(",") if d.strip()}


def orders_of(day: datetime.date) -> list[dict[str, object]]:
    rng = random.Random(day.toordinal())
    return [{"id": f"{day}-{n}", "region": rng.choice(REGIONS), "amount": round(rng.uniform(5, 200), 2)}
            for n in range(1, rng.randint(3, 9))]


class Orders(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        raw = parse_qs(url.query).get("day", [""])[0]
        try:
            day = datetime.date.fromisoformat(raw)
        except ValueError:
            self._answer(400, {"error": f"day must be YYYY-MM-DD, not {raw!r}"})
            return
        if url.path != "/orders":
            self._answer(404, {"error": "try /orders?day=YYYY-MM-DD"})
        elif raw in DOWN:
            self._answer(503, {"error": "upstream down for maintenance"})
        else:
            self._answer(200, orders_of(day))

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8100
    print(f"orders API on http://127.0.0.1:{port}/orders?day=YYYY-MM-DD", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Orders).serve_forever()
