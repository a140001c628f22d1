-- rollup_7d.sql: orders and revenue of the seven days ending on each date, from the orders the `orders` source
-- mirrored into raw_orders. Run with DATESYNC_ROLLUP_AFTER=orders:-6..0, so it starts only once those seven
-- days have synced, and re-runs (with --cascade) when one of them is re-synced.
CREATE TABLE IF NOT EXISTS orders_7d (
    day date PRIMARY KEY, orders integer NOT NULL, revenue numeric NOT NULL, built_at timestamptz NOT NULL
);
DELETE FROM orders_7d WHERE day = $1;
INSERT INTO orders_7d (day, orders, revenue, built_at)
SELECT $1, count(*), coalesce(sum((payload ->> 'amount')::numeric), 0), now()
FROM raw_orders
WHERE day BETWEEN $1::date - 6 AND $1::date;
