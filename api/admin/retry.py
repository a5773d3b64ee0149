"""Retry: a new job with the same parameters, through the API's own submission path
(`api.submit`: validation against the current catalog, quotas, input storage, fair queueing).

The new job belongs to the original job's owner and key, so it shows in their listing and counts
against their quota; its input images are the stored ones, copied under the new job's id.
"""

from __future__ import annotations

import hashlib
import json

from api import submit
from api.services import Services
from shared.auth import Principal
from shared.ids import new_job_id
from shared.inputs import INPUT_KEYS, Limits
from shared.jobs.params import JobParams
from shared.jobs.record import Job
from shared.jobs.schema import JobRequest, resolve_request


def retry_job(services: Services, job: Job) -> Job:
    settings = services.settings
    old = JobParams.from_stored(job.params)
    fields = old.request_fields()
    uploads = {name: services.storage.get(getattr(old, key)) for name, key in INPUT_KEYS.items()
               if getattr(old, key)}
    request = JobRequest(**fields)
    params = resolve_request(request, services.catalog, settings, frozenset(uploads))
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    owner = Principal(key_id=job.key_id or job.owner, owner=job.owner, role="user")
    limits = Limits(settings.input_max_bytes, settings.input_max_pixels)
    return submit.create_job(services, owner, new_job_id(), params,
                             submit.Submission(request, uploads, digest), limits)
