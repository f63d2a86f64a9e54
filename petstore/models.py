"""The Petstore's data: tables, request bodies and responses, one family of classes per noun.

Tables use snake_case columns; the JSON the Petstore v3 document defines is camelCase, so the
API classes carry camelCase aliases and are built from the tables by ``from_row`` functions.
Every API class forbids unknown fields: a typo in a client's body is a 422, not a silent drop.
"""

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)
from pydantic.alias_generators import to_camel
from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Index, Integer, String
from sqlmodel import Field, Relationship, SQLModel

INT64_MAX = 2**63 - 1
#: The largest id of a pet, order, user, category or tag, chosen or generated: 2**53 - 1, the
#: largest integer a JavaScript number (the dashboard's, most browsers' JSON) holds exactly. Ids
#: stay JSON integers, as the Petstore document has them; past this a browser would show, and
#: send back, a neighbouring id instead.
MAX_ID = 2**53 - 1
# 64-bit ids everywhere, but SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")
INT32_MAX = 2**31 - 1
#: SQLite's AUTOINCREMENT on the tables whose rows are deleted while clients may still know their
#: ids (a pet, an order, a user; the outbox id is the broker's duplicate filter): without it SQLite
#: gives the next row the largest id in use plus one, so deleting the newest row hands its id on.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def _clean_text(value: str) -> str:
    # PostgreSQL rejects NUL in text and lone surrogates cannot be stored as UTF-8: refuse both
    # here, as a 422, instead of letting the database turn them into a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _utc(value: datetime) -> datetime:
    # SQLite keeps no zone, so every instant is stored in UTC; a time without a zone is read as UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range") from None


Text = Annotated[str, StringConstraints(max_length=255), AfterValidator(_clean_text)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_clean_text)]
Url = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_clean_text)]
Id = Annotated[int, Field(ge=0, le=MAX_ID)]


_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_time_text(value: Any) -> Any:
    # Pydantic would take a number (or a string of digits) as Unix time; the document says an
    # RFC 3339 date-time, which starts with its full date.
    if isinstance(value, datetime) or (isinstance(value, str) and _FULL_DATE.match(value)):
        return value
    raise ValueError("must be a date-time string (RFC 3339)")


UtcDateTime = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_utc)]


class PetStatus(enum.StrEnum):
    available = "available"
    pending = "pending"
    sold = "sold"


class OrderStatus(enum.StrEnum):
    placed = "placed"
    approved = "approved"
    delivered = "delivered"


class Role(enum.StrEnum):
    admin = "admin"
    staff = "staff"
    customer = "customer"


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiModel(SQLModel):
    """Base of the JSON bodies: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(  # type: ignore[assignment]
        alias_generator=to_camel, populate_by_name=True, extra="forbid", serialize_by_alias=True
    )

    @model_serializer(mode="wrap")
    def _absent_not_null(self, handler: SerializerFunctionWrapHandler) -> Any:
        # The Petstore document declares no field nullable: a value we do not have is an absent
        # key, never null, or clients generated from it fail (`Category.from_dict(None)`). Being
        # here, it holds for every dump: REST answers, event payloads and snapshots alike.
        data = handler(self)
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


# --- tables -----------------------------------------------------------------------------------


class PetTagLink(SQLModel, table=True):
    __tablename__ = "pet_tag"

    pet_id: int = Field(sa_column=Column(BigId, ForeignKey("pet.id", ondelete="CASCADE"), primary_key=True))
    tag_id: int = Field(sa_column=Column(BigId, ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True))


class Category(SQLModel, table=True):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str | None = Field(default=None, sa_column=Column(String(255), index=True))


class Tag(SQLModel, table=True):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str | None = Field(default=None, sa_column=Column(String(255), index=True))


class Pet(SQLModel, table=True):
    __table_args__ = NEVER_REUSE_IDS

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    status: str = Field(default=PetStatus.available, sa_column=Column(String(16), nullable=False, index=True))
    category_id: int | None = Field(
        default=None, sa_column=Column(BigId, ForeignKey("category.id", ondelete="SET NULL"), index=True)
    )
    # A default, not default_factory=list: pydantic inspects a factory's signature on every
    # construction (slow for builtins); a mutable default is copied per instance all the same.
    photo_urls: list[str] = Field(default=[], sa_column=Column(JSON, nullable=False))

    category: Category | None = Relationship(sa_relationship_kwargs={"lazy": "raise"})
    tags: list[Tag] = Relationship(
        link_model=PetTagLink, sa_relationship_kwargs={"lazy": "raise", "order_by": "Tag.id"}
    )


class User(SQLModel, table=True):
    __tablename__ = "users"  # "user" is reserved in PostgreSQL
    __table_args__ = NEVER_REUSE_IDS

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    username: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    first_name: str | None = Field(default=None, sa_column=Column(String(255)))
    last_name: str | None = Field(default=None, sa_column=Column(String(255)))
    email: str | None = Field(default=None, sa_column=Column(String(255)))
    phone: str | None = Field(default=None, sa_column=Column(String(255)))
    user_status: int | None = Field(default=None, sa_column=Column(Integer))
    password_hash: str = Field(sa_column=Column(String(255), nullable=False), repr=False)
    role: str = Field(default=Role.customer, sa_column=Column(String(16), nullable=False))


class Order(SQLModel, table=True):
    __tablename__ = "purchase_order"  # "order" is a reserved word in SQL
    __table_args__ = NEVER_REUSE_IDS

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    # Not a foreign key: an order outlives the pet it was for, as a record of the sale.
    pet_id: int = Field(sa_column=Column(BigId, nullable=False, index=True))
    quantity: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    ship_date: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    status: str = Field(default=OrderStatus.placed, sa_column=Column(String(16), nullable=False))
    complete: bool = False
    user_id: int | None = Field(
        default=None, sa_column=Column(BigId, ForeignKey("users.id", ondelete="SET NULL"), index=True)
    )


class OutboxEvent(SQLModel, table=True):
    """An event written in the transaction of the change it describes; the relay publishes it after commit."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "id"), NEVER_REUSE_IDS)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    event: str = Field(sa_column=Column(String(64), nullable=False))
    rooms: list[str] = Field(sa_column=Column(JSON, nullable=False))
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    published_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


# --- JSON bodies ------------------------------------------------------------------------------


class CategoryBody(ApiModel):
    id: Id | None = None
    name: Text | None = None


class TagBody(ApiModel):
    id: Id | None = None
    name: Text | None = None


class PetBody(ApiModel):
    """A Pet as clients send and receive it (the Petstore ``Pet`` schema)."""

    id: Id | None = None
    name: Name
    category: CategoryBody | None = None
    photo_urls: Annotated[list[Url], Field(max_length=100)]
    tags: Annotated[list[TagBody], Field(max_length=100)] = []
    status: PetStatus | None = None


class PetPublic(ApiModel):
    id: int
    name: str
    category: CategoryBody | None = None
    photo_urls: list[str]
    tags: list[TagBody]
    status: PetStatus

    @classmethod
    def from_row(cls, pet: Pet) -> "PetPublic":
        assert pet.id is not None
        # Constructed, not validated: a row from before ids stopped at MAX_ID is shown as it is.
        category = None
        if pet.category is not None:
            category = CategoryBody.model_construct(id=pet.category.id, name=pet.category.name)
        return cls(
            id=pet.id,
            name=pet.name,
            category=category,
            photo_urls=list(pet.photo_urls),
            # By id, as the database returns them: a fresh pet and a reloaded one look the same.
            tags=[
                TagBody.model_construct(id=tag.id, name=tag.name)
                for tag in sorted(pet.tags, key=lambda tag: tag.id or 0)
            ],
            status=PetStatus(pet.status),
        )


class OrderBody(ApiModel):
    """An order as a client places it (the Petstore ``Order`` schema)."""

    id: Id | None = None
    pet_id: Id
    quantity: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1
    ship_date: UtcDateTime | None = None
    status: OrderStatus | None = None
    complete: bool | None = None


class OrderPatch(ApiModel):
    """What staff may change on an order (an extension: the Petstore document has no order update)."""

    status: OrderStatus | None = None
    complete: bool | None = None
    ship_date: UtcDateTime | None = None


class OrderPublic(ApiModel):
    id: int
    pet_id: int
    quantity: int
    ship_date: datetime | None = None
    status: OrderStatus
    complete: bool

    @classmethod
    def from_row(cls, order: Order) -> "OrderPublic":
        assert order.id is not None
        ship_date = order.ship_date
        if ship_date is not None and ship_date.tzinfo is None:
            ship_date = ship_date.replace(tzinfo=UTC)  # SQLite drops the zone; everything is stored in UTC
        return cls(
            id=order.id,
            pet_id=order.pet_id,
            quantity=order.quantity,
            ship_date=ship_date,
            status=OrderStatus(order.status),
            complete=order.complete,
        )


class UserBody(ApiModel):
    """A user as a client sends it (the Petstore ``User`` schema); ``password`` is write-only."""

    id: Id | None = None
    username: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@+-]+$")]
    first_name: Text | None = None
    last_name: Text | None = None
    email: Text | None = None
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_clean_text)] | None = (
        None
    )
    phone: Text | None = None
    user_status: Annotated[int, Field(ge=-(2**31), le=INT32_MAX)] | None = None


class UserPublic(ApiModel):
    id: int
    username: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    user_status: int | None = None

    @classmethod
    def from_row(cls, user: User) -> "UserPublic":
        assert user.id is not None
        return cls(
            id=user.id,
            username=user.username,
            first_name=user.first_name,
            last_name=user.last_name,
            email=user.email,
            phone=user.phone,
            user_status=user.user_status,
        )


class ApiResponse(ApiModel):
    code: int
    type: str
    message: str
