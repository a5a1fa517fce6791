"""All tables; importing this package registers them on `SQLModel.metadata` for alembic."""

from sqlmodel import SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

from service.models.event import Event  # noqa: E402
from service.models.health_batch import HealthBatch  # noqa: E402
from service.models.health_daily import HealthDaily  # noqa: E402
from service.models.health_sample import HealthSample  # noqa: E402
from service.models.health_user import HealthUser  # noqa: E402
from service.models.idempotency import IdempotencyRecord  # noqa: E402
from service.models.page_validator import PageValidator  # noqa: E402
from service.models.push_url import PushUrl  # noqa: E402
from service.models.record import Record  # noqa: E402
from service.models.run import ACTIVE_STATUSES, FINAL_STATUSES, Run  # noqa: E402
from service.models.task import Task, TaskTag  # noqa: E402
from service.models.tenant import ApiKey, Tenant  # noqa: E402
from service.models.webhook import Webhook  # noqa: E402
from service.models.webhook_delivery import WebhookDelivery  # noqa: E402

metadata = SQLModel.metadata

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "ApiKey",
    "Event",
    "HealthBatch",
    "HealthDaily",
    "HealthSample",
    "HealthUser",
    "IdempotencyRecord",
    "PageValidator",
    "PushUrl",
    "Record",
    "Run",
    "Task",
    "TaskTag",
    "Tenant",
    "Webhook",
    "WebhookDelivery",
    "metadata",
]
