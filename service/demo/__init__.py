"""`backsync demo`: a wearable-like upstream, a task against it, and its runs live."""
