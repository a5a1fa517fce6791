"""Webhooks (SPEC §7): endpoints subscribe to event types, and the worker delivers each
matching event to each endpoint, signed per Standard Webhooks and retried with backoff.

- `router` / `service` / `repository` / `schemas`: the API (`/v1/webhooks`).
- `signing`: secrets and the `webhook-*` headers.
- `fanout`: turns new events into delivery rows, once per (endpoint, event).
- `sender`: claims due deliveries, POSTs them, records each attempt.
- `deliverer`: the worker's loop around the two, woken by a doorbell.
"""
