-- The event log: every fact porten records, one row per event.
--
-- `position` is the global order. It is assigned by the writer as max(position) + 1
-- while it holds `LOCK TABLE porten_events IN EXCLUSIVE MODE`, so positions are
-- gapless and commit in order: a follower that reads `position > last_seen` can never
-- skip an event that commits late (a sequence could not promise that). Plain SELECTs
-- take ACCESS SHARE and are never blocked by that lock.
--
-- `(stream, version)` is the optimistic-concurrency key: versions count from 0 within
-- a stream and an append names the version it expects. `at` is the event's own time
-- (from its payload), `recorded_at` when the log accepted it. `data` is the event as
-- porten's canonical JSON, queryable with SQL; its `type` field is copied to `type`.

CREATE TABLE porten_events (
    position    bigint      PRIMARY KEY,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    at          timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    data        jsonb       NOT NULL,
    UNIQUE (stream, version),
    CHECK (position > 0),
    CHECK (version >= 0)
);

-- `porten events list --type` with exact tags (`node_enrolled`) or prefixes (`node_`):
-- text_pattern_ops serves both `=` and `LIKE 'node\_%'`; position orders each tag.
CREATE INDEX porten_events_type ON porten_events (type text_pattern_ops, position);

-- `porten events list --since/--until` and `porten events state --at`.
CREATE INDEX porten_events_at ON porten_events (at);
