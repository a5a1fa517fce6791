"""Health metrics (SPEC §6): samples from phones and wearable APIs, checked against one
table of types and units (`types`), de-duplicated by the client's ids (`merge`), stored
by the worker in resumable chunks (`ingest`, `jobs`), summarised per local day without
counting two sources twice (`daily`), and mirrored back through a per-user change feed."""
