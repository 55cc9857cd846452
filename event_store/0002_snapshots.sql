-- Folded fleet states, so a restarting hub reads a snapshot plus the tail of the log
-- instead of the whole log.
--
-- `position` is the last event the snapshot covers; `schema` is the shape of the
-- state it encodes (porten.domain.snapshot.STATE_SCHEMA): a hub only loads snapshots
-- of its own schema and folds the full log otherwise. `data` is MessagePack. Only the
-- newest few snapshots per schema are kept; they are a cache, the log is the truth,
-- and deleting every row here is always safe.

CREATE TABLE porten_snapshots (
    position   bigint      NOT NULL,
    schema     integer     NOT NULL,
    data       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema, position)
);
