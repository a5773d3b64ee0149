"""Fill a job store fast, for paging tests, the 100 000-job measurement and the screenshots.

One Lua script per chunk writes the same hash fields and indexes that the store's CREATE and
FINISH scripts write, so Redis does the work (100 000 jobs in a few seconds).
"""

from __future__ import annotations

from shared.jobs.store import JobStore

# ARGV: prefix, first index, count, start time, spacing seconds, statuses (comma-separated; job n
# gets the (n mod #statuses)-th).
SEED = """
local prefix, first, count, start, spacing = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local statuses = {}
for name in string.gmatch(ARGV[6], '[^,]+') do statuses[#statuses + 1] = name end
local prompts = {'a red fox in the snow', 'lighthouse at dusk, oil painting', 'a bowl of ramen, studio photo',
                 'isometric city block', 'portrait of a cat astronaut', 'misty forest, morning light'}
for n = first, first + count - 1 do
  local created = start + n * spacing
  local id = string.format('job_%012x%016d', math.floor(created * 1000), n)
  local status, owner = statuses[n % #statuses + 1], 'owner' .. (n % 5)
  local params = cjson.encode({model = 'kiln-ddpm-tiny', task = 'unconditional', width = 32, height = 32,
    steps = 20, seed = n, num_images = 1, scheduler = 'ddim', prompt = prompts[n % 6 + 1] .. ' #' .. n})
  local job = prefix .. ':job:' .. id
  redis.call('HSET', job, 'id', id, 'owner', owner, 'model', 'kiln-ddpm-tiny', 'queue', 'kiln.default',
    'params', params, 'status', status, 'created_at', created, 'updated_at', created, 'progress_total', 20,
    'progress_step', (status == 'succeeded') and 20 or (n % 20), 'attempts', (status == 'queued') and 0 or 1)
  if status == 'succeeded' or status == 'failed' or status == 'canceled' then
    local wait, run = 0.05 + (n % 40) / 20, 0.5 + (n % 35) / 10
    redis.call('HSET', job, 'started_at', created + wait, 'finished_at', created + wait + run, 'worker', 'w-seed',
      'timings', cjson.encode({queue_wait_s = wait, total_s = run}))
    if status == 'succeeded' then
      redis.call('HSET', job, 'outputs', cjson.encode({{index = 0, key = 'outputs/' .. id .. '/0.png', size = 900,
        seed = n, content_type = 'image/png', width = 32, height = 32}}))
    elseif status == 'failed' then
      redis.call('HSET', job, 'error', cjson.encode({code = 'model_error', message = 'the model raised'}))
    end
  end
  redis.call('ZADD', prefix .. ':jobs:all', created, id)
  redis.call('ZADD', prefix .. ':jobs:status:' .. status, created, id)
  redis.call('ZADD', prefix .. ':jobs:owner:' .. owner, created, id)
end
return count
"""


STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "canceled", "queued", "running")
FINISHED = ("succeeded", "succeeded", "succeeded", "failed", "canceled")  # safe beside a live stack


def seed_jobs(store: JobStore, count: int, start: float, spacing_s: float = 1.0, chunk: int = 5000,
              statuses: tuple[str, ...] = STATUSES) -> list[str]:
    """Insert `count` jobs created `spacing_s` apart from `start`; returns their ids, oldest first.

    Job n has status `statuses[n % len(statuses)]` (by default 3 of 7 succeeded, 1 failed,
    1 canceled, 1 queued, 1 running; a live stack would run seeded queued jobs: use FINISHED), owner `owner<n % 5>` and a prompt from a list of 6 ending in `#<n>`.
    """
    script = store.redis.register_script(SEED)
    for first in range(0, count, chunk):
        script(args=[store.prefix, first, min(chunk, count - first), repr(start), repr(spacing_s), ",".join(statuses)])
    return [f"job_{int((start + n * spacing_s) * 1000):012x}{n:016d}" for n in range(count)]
