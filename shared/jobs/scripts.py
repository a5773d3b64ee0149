"""Redis Lua scripts: every job-state transition is one of these, so each is atomic.

Conventions: KEYS[1] is the job hash, KEYS[2] its lease key. ARGV[1] is the status index stem
(`RedisKeys.status_stem`: a status's index is the stem plus the status, a sorted set scored by
creation time), ARGV[2] the job id, ARGV[3] the time now (float seconds). Key names come from
`shared.redis_keys`; the status names and which of them are terminal come from `Status`.
"""

from shared.jobs.record import TERMINAL


def is_terminal_lua() -> str:
    """A Lua `is_terminal(s)` true for exactly the statuses of `record.TERMINAL`."""
    tests = " or ".join(f"s == '{status.value}'" for status in sorted(TERMINAL))
    return f"local function is_terminal(s)\n  return {tests}\nend\n"


# Shared Lua helper: move the job between status indexes and set its status.
_MOVE = """
local function move(statuses, id, job, from, to, now)
  local created = redis.call('HGET', job, 'created_at')
  redis.call('ZREM', statuses .. from, id)
  redis.call('ZADD', statuses .. to, created, id)
  redis.call('HSET', job, 'status', to, 'updated_at', now)
end
""" + is_terminal_lua()

# KEYS[3] all jobs' index, KEYS[4] the owner's index. ARGV[4..]: field/value pairs. Creates the
# record unless the id exists. Returns 1 or 0.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_at', now, 'updated_at', now, 'attempts', 0)
redis.call('ZADD', KEYS[3], now, id)
redis.call('ZADD', statuses .. 'queued', now, id)
redis.call('ZADD', KEYS[4], now, id)
return 1
"""

# ARGV[4] worker id, ARGV[5] lease token, ARGV[6] lease ttl ms, ARGV[7] max attempts.
# Returns {outcome, detail}: started/<attempt>, missing, terminal/<status>, leased/<holder>,
# canceled, exhausted/<attempts>.
START = _MOVE + """
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if is_terminal(status) then return {'terminal', status} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'leased', holder} end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  move(statuses, id, KEYS[1], status, 'canceled', now)
  redis.call('HSET', KEYS[1], 'finished_at', now)
  return {'canceled', ''}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[7]) then
  move(statuses, id, KEYS[1], status, 'failed', now)
  redis.call('HSET', KEYS[1], 'finished_at', now, 'error', cjson.encode({code = 'too_many_attempts',
    message = 'the job was started ' .. attempts .. ' times and its worker was lost each time'}))
  return {'exhausted', tostring(attempts)}
end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
redis.call('HSET', KEYS[1], 'attempts', attempts + 1, 'worker', ARGV[4], 'started_at', now,
  'progress_step', 0)
move(statuses, id, KEYS[1], status, 'running', now)
return {'started', tostring(attempts + 1)}
"""

# ARGV[4] token, ARGV[5] ttl ms. Returns 1 when the lease was ours and is renewed.
RENEW = """
if redis.call('GET', KEYS[2]) == ARGV[4] then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return 1
end
return 0
"""

# ARGV[4] token, ARGV[5] step, ARGV[6] total. Returns 'ok', 'cancel' or 'gone'.
PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 'gone' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 'gone' end
redis.call('HSET', KEYS[1], 'progress_step', ARGV[5], 'progress_total', ARGV[6], 'updated_at', ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""

# ARGV[4] token, ARGV[5] terminal status, ARGV[6] retention seconds, ARGV[7..] field/value pairs.
# Ends a running job held by this token (or by nobody). Returns 1 when it did.
FINISH = _MOVE + """
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 0 end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'finished_at', now)
move(statuses, id, KEYS[1], 'running', ARGV[5], now)
redis.call('DEL', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""

# ARGV[4] retention seconds. Returns 'canceled' (was queued), 'requested' (running), or the
# terminal status it already had, or 'missing'.
CANCEL = _MOVE + """
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if is_terminal(status) then return status end
if status == 'queued' then
  move(statuses, id, KEYS[1], status, 'canceled', now)
  redis.call('HSET', KEYS[1], 'finished_at', now, 'cancel_requested', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 'canceled'
end
redis.call('HSET', KEYS[1], 'cancel_requested', 1, 'updated_at', now)
return 'requested'
"""

# A running job whose lease expired lost its worker. ARGV[4] max attempts, ARGV[5] grace s,
# ARGV[6] retention s. Returns 'requeued', 'failed' or 'skip'.
REAP = _MOVE + """
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 'skip' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'skip' end
local updated = tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0')
if tonumber(now) - updated < tonumber(ARGV[5]) then return 'skip' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  move(statuses, id, KEYS[1], 'running', 'canceled', now)
  redis.call('HSET', KEYS[1], 'finished_at', now)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return 'canceled'
end
if attempts >= tonumber(ARGV[4]) then
  move(statuses, id, KEYS[1], 'running', 'failed', now)
  redis.call('HSET', KEYS[1], 'finished_at', now, 'error', cjson.encode({code = 'too_many_attempts',
    message = 'the job was started ' .. attempts .. ' times and its worker was lost each time'}))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return 'failed'
end
move(statuses, id, KEYS[1], 'running', 'queued', now)
redis.call('HSET', KEYS[1], 'worker', '', 'progress_step', 0)
return 'requeued'
"""

# ARGV[4] token, ARGV[5..] field/value pairs. Annotates a running job held by this token (or by
# nobody): its phase, its latest preview. Returns 1 when it did.
ANNOTATE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
return 1
"""
