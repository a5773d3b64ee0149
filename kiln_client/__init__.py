"""A small Python client for the Kiln API (needs only `requests`) and the `kiln` CLI."""

from kiln_client.client import Client, KilnAPIError

__all__ = ["Client", "KilnAPIError"]
