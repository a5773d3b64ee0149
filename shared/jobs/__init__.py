"""Jobs: the request schema, the record and its state machine, and the Redis store."""
