-- Usage and earnings reports (GET /v1/usage, porten usage) sum request_served events by
-- key or by node owner over a time range. These partial indexes cover exactly those rows,
-- so a report reads the matching events and nothing else, however long the log grows.

CREATE INDEX porten_events_usage_by_key ON porten_events ((data->>'key_id'), at)
    WHERE type = 'request_served';

CREATE INDEX porten_events_earnings_by_owner ON porten_events ((data->>'node_owner_id'), at)
    WHERE type = 'request_served';
