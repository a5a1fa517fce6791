"""`Idempotency-Key` for the POSTs that create things: tasks and runs."""
