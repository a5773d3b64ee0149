"""Fair queueing between API keys, in front of Celery.

The API does not send a job straight into the broker's FIFO queue: it appends the job id to its
key's own waiting list and puts the key on a ring of keys with waiting jobs. A dispatcher
(`shared.dispatcher`) takes ids round-robin from the ring — one job per key per turn — and sends
them to Celery only while the broker queue holds fewer than `dispatch_queue_depth` messages, so
the order in which workers see jobs is decided here, fairly, and not by who submitted first.
One key flooding the queue then delays only itself.

Redis layout per Celery queue `q` (prefix `p`):

    p:fair:queues            set of Celery queue names that have ever had jobs
    p:fair:<q>:ring          list of key ids with waiting jobs (rotated on every take)
    p:fair:<q>:wait:<key>    list of that key's waiting job ids (FIFO)
    p:fair:inflight          sorted set: ids taken but not yet confirmed sent (score = time taken)
    p:fair:inflight:queue    hash: id -> Celery queue, for re-sending

At-least-once: a take moves the id into `inflight` in the same script; it leaves only after the
broker accepted the message. A dispatcher that dies in between leaves the id there, and any
dispatcher re-sends ids older than `resend_after_s`. A duplicate delivery is harmless: the job
record's lease decides whether a delivery runs.
"""

from __future__ import annotations

import time

import redis

from shared.redis_keys import RedisKeys

# KEYS[1] ring, KEYS[2] queues set, KEYS[3] the key's waiting list. ARGV: queue, key id, job id.
PUSH = """
redis.call('RPUSH', KEYS[3], ARGV[3])
if not redis.call('LPOS', KEYS[1], ARGV[2]) then redis.call('RPUSH', KEYS[1], ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] ring, KEYS[2] inflight zset, KEYS[3] inflight queue hash. ARGV: the queue's waiting-list
# stem (`RedisKeys.fair_wait_stem`: a key's list is the stem plus the key id), queue, now.
# Rotates the ring by one key and pops that key's oldest job id. Returns the id or false.
TAKE = """
for _ = 1, redis.call('LLEN', KEYS[1]) do
  local key = redis.call('LMOVE', KEYS[1], KEYS[1], 'LEFT', 'RIGHT')
  local wait = ARGV[1] .. key
  local id = redis.call('LPOP', wait)
  if redis.call('LLEN', wait) == 0 then redis.call('LREM', KEYS[1], 0, key) end
  if id then
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    redis.call('HSET', KEYS[3], id, ARGV[2])
    return id
  end
end
return false
"""


class FairQueue:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis, self.names = client, RedisKeys(prefix)
        self._push = client.register_script(PUSH)
        self._take = client.register_script(TAKE)
        self.inflight = self.names.fair_inflight
        self.inflight_queue = self.names.fair_inflight_queue

    def ring(self, queue: str) -> str:
        return self.names.fair_ring(queue)

    def push(self, queue: str, key_id: str, job_id: str) -> None:
        """Append `job_id` to `key_id`'s waiting list for Celery queue `queue`."""
        self._push(keys=[self.ring(queue), self.names.fair_queues, self.names.fair_wait(queue, key_id)],
                   args=[queue, key_id, job_id])

    def take(self, queue: str) -> str | None:
        """The next job id, round-robin over keys, now marked in flight; None when none waits."""
        return self._take(keys=[self.ring(queue), self.inflight, self.inflight_queue],
                          args=[self.names.fair_wait_stem(queue), queue, repr(time.time())]) or None

    def sent(self, job_id: str) -> None:
        """The broker has the message: the id is no longer in flight."""
        pipe = self.redis.pipeline()
        pipe.zrem(self.inflight, job_id)
        pipe.hdel(self.inflight_queue, job_id)
        pipe.execute()

    def stale(self, older_than_s: float) -> list[tuple[str, str]]:
        """(job id, queue) taken more than `older_than_s` ago and never confirmed sent."""
        ids = self.redis.zrangebyscore(self.inflight, "-inf", time.time() - older_than_s, start=0, num=100)
        queues = self.redis.hmget(self.inflight_queue, ids) if ids else []
        return [(job_id, queue) for job_id, queue in zip(ids, queues) if queue]

    def queues(self) -> list[str]:
        return sorted(self.redis.smembers(self.names.fair_queues))

    def waiting(self, queue: str) -> int:
        """How many jobs wait, all keys together (for metrics and tests)."""
        keys = self.redis.lrange(self.ring(queue), 0, -1)
        return sum(self.redis.llen(self.names.fair_wait(queue, key)) for key in keys)
