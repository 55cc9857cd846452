"""The rate limiter shared by every hub process: one Lua script per decision, run atomically.

Redis runs a script without interleaving any other command, so the check
of all three limits (requests/min, tokens/min, budget) and their charge is
one indivisible step however many hubs ask at once — no read-modify-write
race, no lock. The scripts transcribe :mod:`porten.domain.quota` line for
line; ``tests/contract/test_limiter_contract.py`` holds them to the same
behaviour as the in-process :class:`~porten.services.ratelimit.LocalLimiter`.

Keys share the hash tag ``{<key id>}`` so a Redis Cluster keeps one API
key's state on one shard. Rates expire a second after they drain; budget
state lives 30 days past its last use (afterwards it is rebuilt from the
log's ``spent``). Time is the hub's clock, passed in: hubs are expected to
be NTP-synchronised, and a few milliseconds of skew are nothing against a
per-minute limit.

Calls go through redis-py's asyncio client (see :meth:`RedisLimiter.from_url`
for how it is set up and why). A failure — connection refused or reset, no
answer within the timeout — surfaces as a :class:`redis.exceptions.RedisError`
at once: the client never retries, because what a hub does when Redis is
unreachable is :class:`~porten.services.admission.Gate`'s decision, not this
adapter's.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from porten.domain.quota import SLICE_SHARE
from porten.services.ratelimit import Ask, Limit, Settlement, Verdict

#: Seconds budget state outlives its last use.
BUDGET_TTL_S: Final = 30 * 86_400

_GCRA: Final = """
local period = 60.0
local function gcra(key, now, cost, limit)
  local tat = tonumber(redis.call('GET', key) or '0')
  local charged = math.min(cost, limit) * period / limit
  local new_tat = math.max(tat, now) + charged
  local ahead = new_tat - now
  if ahead <= period + 0.001 then return true, new_tat, 0 end  -- quota.SLACK_S
  return false, tat, ahead - period
end
local function store_tat(key, now, tat)
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
-- Release up to `amount` of hold `rid` (a negative amount: all of it); never more than it holds.
local function release(kbudget, kholds, kholdx, rid, amount)
  local hold = tonumber(redis.call('HGET', kholds, rid) or '0')
  local freed = hold
  if amount >= 0 then freed = math.min(hold, amount) end
  if freed > 0 then redis.call('HINCRBY', kbudget, 'held', -freed) end
  if hold - freed > 0 then
    redis.call('HINCRBY', kholds, rid, -freed)
  else
    redis.call('HDEL', kholds, rid)
    redis.call('ZREM', kholdx, rid)
  end
end
"""

ADMIT: Final = _GCRA + """
-- KEYS: requests TAT, tokens TAT, budget hash (spent, held), holds hash, holds expiry zset
local now, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, budget, spent_log = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local want, least, rid, hold_s = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local ttl, req_cost = tonumber(ARGV[11]), tonumber(ARGV[12])
local size, share = tonumber(ARGV[15]), tonumber(ARGV[16])
local hold_release, hold_spent = tonumber(ARGV[17]), tonumber(ARGV[18])
local refunds = {{KEYS[1], tonumber(ARGV[13]), rpm}, {KEYS[2], tonumber(ARGV[14]), tpm}}
for _, r in ipairs(refunds) do
  if r[2] > 0 and r[3] > 0 then
    local tat = tonumber(redis.call('GET', r[1]) or '0')
    if tat > now then store_tat(r[1], now, math.max(now, tat - r[2] * period / r[3])) end
  end
end
if budget >= 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  for _, r in ipairs(expired) do release(KEYS[3], KEYS[4], KEYS[5], r, -1) end
  if hold_release > 0 or hold_spent > 0 then
    release(KEYS[3], KEYS[4], KEYS[5], rid, math.max(hold_release, 0))
    redis.call('HINCRBY', KEYS[3], 'spent', hold_spent)
    for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
local req_tat, tok_tat
if rpm > 0 then
  local ok, tat, wait = gcra(KEYS[1], now, req_cost, rpm)
  if not ok then return {0, 'requests', tostring(wait), '0', '0'} end
  req_tat = tat
end
if tpm > 0 then
  local ok, tat, wait = gcra(KEYS[2], now, tokens, tpm)
  if not ok then return {0, 'tokens', tostring(wait), '0', '0'} end
  tok_tat = tat
end
local reserved, spent = 0, 0
if budget >= 0 then
  spent = math.max(tonumber(redis.call('HGET', KEYS[3], 'spent') or '0'), spent_log)
  local held = math.max(0, tonumber(redis.call('HGET', KEYS[3], 'held') or '0'))
  local available = budget - spent - held
  if size > want and available >= want then  -- quota.budget_slice
    reserved = math.max(want, math.min(size, math.floor(available / share)))
  elseif available >= want then
    reserved = want
  elseif available >= least and available > 0 then
    reserved = available
  elseif want > 0 then
    local wait = 3600
    if held > 0 then wait = 1 end
    return {0, 'budget', tostring(wait), '0', string.format('%d', spent)}
  end
end
if rpm > 0 then store_tat(KEYS[1], now, req_tat) end
if tpm > 0 then store_tat(KEYS[2], now, tok_tat) end
if budget >= 0 then
  redis.call('HSET', KEYS[3], 'spent', string.format('%d', spent))
  if reserved > 0 then
    redis.call('HINCRBY', KEYS[3], 'held', reserved)
    redis.call('HINCRBY', KEYS[4], rid, reserved)
  end
  if redis.call('HEXISTS', KEYS[4], rid) == 1 then
    redis.call('ZADD', KEYS[5], now + hold_s, rid)
  end
  for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, '', '0', string.format('%d', reserved), string.format('%d', spent)}
"""

SETTLE: Final = _GCRA + """
-- KEYS: tokens TAT, budget hash, holds hash, holds expiry zset
local now, tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, rid, budgeted, ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1', tonumber(ARGV[7])
local amount = tonumber(ARGV[8])
if tpm > 0 and delta ~= 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  store_tat(KEYS[1], now, math.max(now, math.max(tat, now) + delta * period / tpm))
end
if budgeted then
  release(KEYS[2], KEYS[3], KEYS[4], rid, amount)
  redis.call('HINCRBY', KEYS[2], 'spent', cost)
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""


def _keys(key_id: str) -> tuple[str, str, str, str, str]:
    tag = f"porten:{{{key_id}}}"
    return (f"{tag}:req", f"{tag}:tok", f"{tag}:budget", f"{tag}:holds", f"{tag}:holdx")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@attrs.define
class RedisLimiter:
    """:class:`~porten.services.ratelimit.Limiter` over one Redis shared by every hub."""

    client: Redis
    _admit: AsyncScript = attrs.field(init=False)
    _settle: AsyncScript = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # EVALSHA, and SCRIPT LOAD + EVALSHA again after a NOSCRIPT (a restarted Redis).
        self._admit = self.client.register_script(ADMIT)
        self._settle = self.client.register_script(SETTLE)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, single_connection: bool = True
                 ) -> RedisLimiter:
        """A limiter on the Redis at ``url`` whose every call gives up after ``timeout_s``.

        Short socket timeouts and **no retries** bound what a Redis outage
        adds to a request before the hub falls back (see
        :mod:`porten.services.shared_limits`, which also sends its calls one
        at a time). One connection (``single_connection_client``) skips the
        pool's checkout on each call, ~10 µs of the ~100 a call takes;
        ``single_connection=False`` gives redis-py's pool instead (up to 100
        connections; ``bench/bench_auth.py`` measures both).
        """
        client = Redis.from_url(
            url, single_connection_client=single_connection, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
        )
        return cls(client)

    async def aclose(self) -> None:
        """Close the connection."""
        await self.client.aclose()

    async def admit(self, ask: Ask) -> Verdict:
        """See :meth:`~porten.services.ratelimit.Limiter.admit`."""
        allowed, limit, wait, reserved, spent = await self._admit(
            list(_keys(ask.key_id)),
            [repr(ask.now), ask.requests_per_min or 0, ask.tokens_per_min or 0, ask.tokens,
             -1 if ask.budget_nano is None else ask.budget_nano, ask.spent_nano,
             ask.want_nano, ask.least_nano, ask.request_id, repr(ask.hold_s), BUDGET_TTL_S,
             ask.request_cost, ask.refund_requests, ask.refund_tokens, ask.slice_nano,
             SLICE_SHARE, ask.hold_release_nano, ask.hold_spent_nano],
        )
        limit_name: Limit = _text(limit)  # type: ignore[assignment]
        return Verdict(
            allowed=int(allowed) == 1, limit=limit_name, retry_after_s=float(_text(wait)),
            reserved_nano=int(_text(reserved)), spent_nano=int(_text(spent)),
        )

    async def settle(self, settlement: Settlement) -> None:
        """See :meth:`~porten.services.ratelimit.Limiter.settle`."""
        s = settlement
        _, tok, budget, holds, holdx = _keys(s.key_id)
        await self._settle(
            [tok, budget, holds, holdx],
            [repr(s.now), s.tokens_per_min or 0, s.tokens_delta, s.cost_nano, s.request_id,
             "1" if s.budgeted else "0", BUDGET_TTL_S,
             -1 if s.release_nano is None else s.release_nano],
        )
