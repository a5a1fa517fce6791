"""Push URLs: secret URLs a provider's "new data" notification calls to trigger a task
(SPEC §3 "Push triggers"). `service` holds the flows, `handshake` what each provider's
subscription check expects, `router` the HTTP surface."""
