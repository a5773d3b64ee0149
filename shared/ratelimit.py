"""Per-key quotas, each one atomic Lua script: a token bucket on submissions, a cap on the
number of queued + running jobs and a cap on open event streams.

Token bucket (Turner, "New directions in communications", 1986): a bucket of `burst` tokens
refills at `rate` per second; a submission takes one token or is refused with the time until one
is there. Active cap: `p:active:<key id>` is a set of the key's unfinished job ids; before it
admits a job the script drops ids whose record is terminal or gone, so the set never holds more
than `cap` live ids and counting is O(cap), never a scan.
"""

from __future__ import annotations

import time

import redis

from shared.errors import ServiceUnavailable, TooManyRequests
from shared.jobs.scripts import is_terminal_lua
from shared.redis_keys import RedisKeys


class Overloaded(ServiceUnavailable):
    """This process is at capacity for some kind of work; `retry_after` becomes `Retry-After`."""

    def __init__(self, message: str, *, retry_after: float = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(-(-retry_after // 1)))


# KEYS[1] bucket hash. ARGV: rate/s, burst, now, ttl s. Returns {1, 0} or {0, wait ms}.
TAKE_TOKEN = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'ts') or ARGV[3])
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
if tokens < 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
  return {0, math.ceil((1 - tokens) / rate * 1000)}
end
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, 0}
"""

# KEYS[1] bucket hash. ARGV: rate/s, burst, now. The wait in ms before a token is there (0: one is).
PEEK_TOKEN = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'ts') or ARGV[3])
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
if tokens >= 1 then return 0 end
return math.ceil((1 - tokens) / rate * 1000)
"""

# KEYS[1] zset of a key's open streams scored by expiry. ARGV: now, ttl s, cap, stream id.
# Returns 1 admitted, 0 at the cap. Streams refresh their expiry while open, so one whose process
# died stops counting after `ttl`.
OPEN_STREAM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""

# KEYS[1] active set. ARGV: job record stem (`RedisKeys.job_stem`: a record is the stem plus its id),
# cap, job id. Returns 1 admitted, 0 full.
ADMIT = is_terminal_lua() + """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = redis.call('HGET', ARGV[1] .. id, 'status')
  if (not s) or is_terminal(s) then
    redis.call('SREM', KEYS[1], id)
  end
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[3])
return 1
"""


class Quotas:
    def __init__(self, client: redis.Redis, prefix: str, rate_per_s: float, burst: int, max_active: int) -> None:
        self.redis, self.names = client, RedisKeys(prefix)
        self.rate, self.burst, self.max_active = rate_per_s, burst, max_active
        self._take = client.register_script(TAKE_TOKEN)
        self._admit = client.register_script(ADMIT)
        self._peek = client.register_script(PEEK_TOKEN)

    def take_token(self, key_id: str) -> None:
        """Take one submission token or raise `TooManyRequests` with the wait."""
        ttl = int(self.burst / self.rate) + 60
        ok, wait_ms = self._take(keys=[self.names.bucket(key_id)],
                                 args=[self.rate, self.burst, repr(time.time()), ttl])
        if not ok:
            raise TooManyRequests(
                f"submission rate limit reached ({self.rate:g}/s, burst {self.burst}); retry later",
                retry_after=wait_ms / 1000, code="rate_limited")

    def check_token(self, key_id: str) -> None:
        """Refuse now, before the body is read, when `take_token` would; takes nothing."""
        wait_ms = self._peek(keys=[self.names.bucket(key_id)], args=[self.rate, self.burst, repr(time.time())])
        if wait_ms:
            raise TooManyRequests(
                f"submission rate limit reached ({self.rate:g}/s, burst {self.burst}); retry later",
                retry_after=wait_ms / 1000, code="rate_limited")

    def admit(self, key_id: str, job_id: str) -> None:
        """Count `job_id` as active for `key_id`, or raise `TooManyRequests` at the cap."""
        admitted = self._admit(keys=[self.names.active(key_id)],
                               args=[self.names.job_stem, self.max_active, job_id])
        if not admitted:
            raise TooManyRequests(
                f"this key has {self.max_active} queued or running jobs, the most allowed; "
                "wait for some to finish", retry_after=5, code="too_many_active_jobs")

    def release(self, key_id: str, job_id: str) -> None:
        """Undo `admit` for a job that was never created."""
        self.redis.srem(self.names.active(key_id), job_id)


class StreamSlots:
    """At most `per_key` open event streams per API key, over every API process."""

    def __init__(self, client: redis.Redis, prefix: str, per_key: int, ttl_s: float) -> None:
        self.redis, self.names, self.per_key, self.ttl_s = client, RedisKeys(prefix), per_key, ttl_s
        self._open = client.register_script(OPEN_STREAM)

    def _key(self, key_id: str) -> str:
        return self.names.streams(key_id)

    def open(self, key_id: str, stream_id: str) -> None:
        """Count a new stream for `key_id`, or raise `TooManyRequests` at the cap."""
        if not self._open(keys=[self._key(key_id)], args=[repr(time.time()), self.ttl_s, self.per_key, stream_id]):
            raise TooManyRequests(f"this key has {self.per_key} open event streams, the most allowed; "
                                  "close one first", retry_after=5, code="too_many_streams_for_key")

    def refresh(self, key_id: str, stream_id: str) -> None:
        self.redis.zadd(self._key(key_id), {stream_id: time.time() + self.ttl_s}, xx=True)

    def close(self, key_id: str, stream_id: str) -> None:
        self.redis.zrem(self._key(key_id), stream_id)
