"""The secure store's models. Importing this package registers every table on ``Base``."""

from gateway.models.base import Base, utcnow
from gateway.models.careteam import Appointment, IdempotencyRecord, QuickReply
from gateway.models.inbound import ImapMailboxState, InboundMessage, QuarantineItem
from gateway.models.messaging import Attachment, Message, Thread
from gateway.models.org import (
    ApiKey,
    Clinic,
    DkimKey,
    Organisation,
    Pool,
    PoolMember,
    RoutingRule,
    Staff,
)
from gateway.models.outbound import Notification
from gateway.models.patient import ClinicConnectionRequest, Enrolment, Patient
from gateway.models.portal import (
    Article,
    ArticleAssignment,
    Result,
    Throttle,
    WebSession,
)
from gateway.models.security import AuditEvent, Token

__all__ = [
    "ApiKey",
    "Appointment",
    "Article",
    "ArticleAssignment",
    "Attachment",
    "AuditEvent",
    "Base",
    "Clinic",
    "ClinicConnectionRequest",
    "DkimKey",
    "Enrolment",
    "IdempotencyRecord",
    "ImapMailboxState",
    "InboundMessage",
    "Message",
    "Notification",
    "Organisation",
    "Patient",
    "Pool",
    "PoolMember",
    "QuarantineItem",
    "QuickReply",
    "Result",
    "RoutingRule",
    "Staff",
    "Thread",
    "Throttle",
    "Token",
    "WebSession",
    "utcnow",
]
