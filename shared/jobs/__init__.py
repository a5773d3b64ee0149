"""Jobs: the request schema, the record and its state machine, the Redis store and its Lua
scripts, and the queries over its indexes (the job listing, the dashboard overview)."""
