"""One Redis subscription per API process, fanned out to every open event stream.

A stream per Redis connection would make thousands of idle streams cost thousands of Redis
connections; here the process subscribes once to the pattern `<prefix>:events:*` and a listener
thread (a greenlet under the gevent worker) hands each message to the queues of the streams
watching that job. Messages are small and a stream re-reads the job record now and then anyway,
so a full queue drops the message rather than blocking the listener.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import defaultdict

import redis

from shared.redis_keys import RedisKeys

logger = logging.getLogger(__name__)
QUEUE_SIZE = 256
POLL_S = 1.0  # the listener checks this often whether anyone still watches
SUBSCRIBE_WAIT_S = 2.0


class EventHub:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis, self.pattern = client, RedisKeys(prefix).events_pattern
        self._channel_prefix = RedisKeys(prefix).events_stem
        self._watchers: dict[str, set[queue.Queue]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def watch(self, job_id: str) -> queue.Queue:
        """A queue receiving the job's events (dicts) until `unwatch`; subscribed on return."""
        inbox: queue.Queue = queue.Queue(QUEUE_SIZE)
        with self._lock:
            self._watchers[job_id].add(inbox)
            if self._thread is None:
                self._subscribed = threading.Event()
                self._thread = threading.Thread(target=self._listen, args=(self._subscribed,),
                                                name="kiln-events", daemon=True)
                self._thread.start()
            subscribed = self._subscribed
        subscribed.wait(SUBSCRIBE_WAIT_S)
        return inbox

    def unwatch(self, job_id: str, inbox: queue.Queue) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(inbox)
                if not watchers:
                    del self._watchers[job_id]

    def _listen(self, subscribed: threading.Event) -> None:
        """Relay messages while anyone watches; a lost Redis connection is retried after a pause."""
        pubsub = None
        while True:
            with self._lock:
                if not self._watchers:
                    self._thread = None
                    break
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.psubscribe(self.pattern)
                    subscribed.set()
                message = pubsub.get_message(timeout=POLL_S)
                if message and message.get("type") == "pmessage":
                    self._deliver(message["channel"], message["data"])
            except redis.RedisError as exc:
                logger.warning("event relay lost Redis (%s); resubscribing", exc)
                pubsub = _closed(pubsub)
                time.sleep(POLL_S)
        _closed(pubsub)

    def _deliver(self, channel: str, data: str) -> None:
        job_id = channel[len(self._channel_prefix):]
        with self._lock:
            inboxes = list(self._watchers.get(job_id, ()))
        if not inboxes:
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        for inbox in inboxes:
            try:
                inbox.put_nowait(event)
            except queue.Full:  # a stalled reader: it re-reads the record instead
                pass


def _closed(pubsub) -> None:
    """Close a pubsub (if any), ignoring a connection that is already gone; returns None."""
    if pubsub is not None:
        try:
            pubsub.close()
        except redis.RedisError:
            pass
