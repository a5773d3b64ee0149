"""The admin dashboard at `/admin`: server-rendered pages for jobs, workers, queues and keys.

Register it with `app.register_blueprint(api.admin.bp)`. Its pages authenticate with a signed
session cookie (signed in with an admin key, see `api.admin.session`), not the API's bearer
header, so they are exempt from the API's header check.
"""

from api.admin.session import bp
from api.admin import jobs, keys, overview, workers  # noqa: E402,F401  (routes on bp)

__all__ = ["bp"]
