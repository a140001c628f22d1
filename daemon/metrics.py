"""Prometheus metrics. Counters and histograms are kept in this process; queue depth and running dates are read
from the database at scrape time (one cheap query), so every replica reports the same truth."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_FINISHED = Counter(
    "datesync_tasks_finished_total", "Dates that reached a final state in this process.", ["source", "state"])
ATTEMPTS_FAILED = Counter(
    "datesync_attempts_failed_total", "Attempts that raised or timed out (retried or not).", ["source"])
RETRIES = Counter("datesync_retries_total", "Failed attempts scheduled for a retry.", ["source"])
TASK_SECONDS = Histogram(
    "datesync_task_duration_seconds", "Time one attempt at one date took.", ["source"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
WAKE_SECONDS = Histogram(
    "datesync_wake_latency_seconds", "From a batch's insert to its first date starting in this daemon.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60))
LISTENER_RECONNECTS = Counter(
    "datesync_listener_reconnects_total", "Times a LISTEN connection was re-established.", ["role"])
RUNNING_HERE = Gauge("datesync_daemon_running_dates", "Dates this daemon holds now (running, or leased ahead).")
SSE_CLIENTS = Gauge("datesync_sse_clients", "Server-Sent Events clients connected to this process.")
QUEUE = Gauge("datesync_tasks", "Tasks by state across the database (read at scrape time).", ["state"])
BATCHES = Gauge("datesync_batches", "Unfinished batches by state (read at scrape time).", ["state"])
PRUNED = Counter("datesync_retention_pruned_total",
                 "Rows removed by retention in this process: batches pruned, and their task and event rows.", ["kind"])
TABLE_BYTES = Gauge("datesync_table_bytes",
                    "Bytes on disk of each datesync table with its indexes (read at scrape time).", ["table"])
HANDLERS_ABANDONED = Counter(
    "datesync_handlers_abandoned_total",
    "Handlers left running after their timeout or stop: a plain function blocked in its thread (kind=thread), or a "
    "coroutine that ignored its cancellation (kind=task). Their dates were ended and their slots freed.", ["kind"])
HANDLERS_STUCK = Gauge(
    "datesync_handlers_stuck", "Abandoned handlers still running in this process.", ["kind"])
