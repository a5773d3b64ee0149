"""Per-key quotas, each one atomic Lua script: a token bucket on submissions and a cap on the
number of queued + running jobs.

Token bucket (Turner, "New directions in communications", 1986): a bucket of `burst` tokens
refills at `rate` per second; a submission takes one token or is refused with the time until one
is there. Active cap: `p:active:<key id>` is a set of the key's unfinished job ids; before it
admits a job the script drops ids whose record is terminal or gone, so the set never holds more
than `cap` live ids and counting is O(cap), never a scan.
"""

from __future__ import annotations

import time

import redis

from shared.errors import TooManyRequests

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

# KEYS[1] active set. ARGV: job key prefix ("p:job:"), cap, job id. Returns 1 admitted, 0 full.
ADMIT = """
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = redis.call('HGET', ARGV[1] .. id, 'status')
  if (not s) or s == 'succeeded' or s == 'failed' or s == 'canceled' then
    redis.call('SREM', KEYS[1], id)
  end
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[3])
return 1
"""


class Quotas:
    def __init__(self, client: redis.Redis, prefix: str, rate_per_s: float, burst: int, max_active: int) -> None:
        self.redis, self.prefix = client, prefix
        self.rate, self.burst, self.max_active = rate_per_s, burst, max_active
        self._take = client.register_script(TAKE_TOKEN)
        self._admit = client.register_script(ADMIT)

    def take_token(self, key_id: str) -> None:
        """Take one submission token or raise `TooManyRequests` with the wait."""
        ttl = int(self.burst / self.rate) + 60
        ok, wait_ms = self._take(keys=[f"{self.prefix}:bucket:{key_id}"],
                                 args=[self.rate, self.burst, repr(time.time()), ttl])
        if not ok:
            raise TooManyRequests(
                f"submission rate limit reached ({self.rate:g}/s, burst {self.burst}); retry later",
                retry_after=wait_ms / 1000, code="rate_limited")

    def admit(self, key_id: str, job_id: str) -> None:
        """Count `job_id` as active for `key_id`, or raise `TooManyRequests` at the cap."""
        admitted = self._admit(keys=[f"{self.prefix}:active:{key_id}"],
                               args=[f"{self.prefix}:job:", self.max_active, job_id])
        if not admitted:
            raise TooManyRequests(
                f"this key has {self.max_active} queued or running jobs, the most allowed; "
                "wait for some to finish", retry_after=5, code="too_many_active_jobs")

    def release(self, key_id: str, job_id: str) -> None:
        """Undo `admit` for a job that was never created."""
        self.redis.srem(f"{self.prefix}:active:{key_id}", job_id)
