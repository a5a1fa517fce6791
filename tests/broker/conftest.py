from tests.sync.conftest import http

__all__ = ["http"]  # the engine tests' outbound client: the budget is tested through it
