"""The Petstore's data: tables, request bodies and public models (answers and event payloads).

Tables use snake_case columns; the JSON the Petstore v3 document defines is camelCase, so the
API classes (:class:`ApiModel`) carry camelCase aliases. The families follow SQLModel's pattern
(``HeroBase`` / ``Hero(table=True)`` / ``HeroCreate`` / ``HeroPublic``) as far as it fits:

- ``CategoryBase``, ``TagBase``, ``OrderBase``, ``UserBase`` declare, once and with their
  columns, the fields a row and its public model share. The table adds what only the database
  holds (``Order.user_id``; ``User.password_hash`` and ``role``, out of reach of every public
  model since none derives from a table); the public model adds the wire form and what reads
  differently: its id is always there, its status is the enum (the table keeps the string the
  column holds).
- A public model is read from a row with ``XPublic.model_validate(row, from_attributes=True)``;
  a table row is made from a body with ``Table.model_validate(body, update={...})``. No field is
  copied by hand. Reading from attributes costs no more than the hand-built models it replaced
  (measured on a loaded ``Pet``), so the hot path needs no faster one.
- Bodies (``XBody``) derive from no base. They are what a client sends, with every write
  constraint (id range, lengths, NUL), and are the JSON Schemas of ``/api/v3/openapi.json``.
  A public model must not inherit those constraints: a row is shown as it is stored, even one
  written before a limit was set (ids past ``MAX_ID``, more than 100 photos). Every field a
  body shares with a base would be redeclared, and the document's field order (``password``
  between ``email`` and ``phone``) is not one a base's fields-first order can give.
- ``Pet`` has no base at all: its JSON order (id, name, category, photoUrls, tags, status)
  puts category between two columns, category and tags are relationships to rows in the table
  but nested objects in the answer, and the table keeps status as a string. A body's category
  and tags are looked up or created, not copied (``petstore.api.pets.apply_body``).

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
from pydantic import Field as PydanticField
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


#: What the document can say of _clean_text: no NUL (lone surrogates cannot be sent as UTF-8 JSON).
NO_NUL = PydanticField(json_schema_extra={"pattern": "^[^\\x00]*$"})
Text = Annotated[str, StringConstraints(max_length=255), AfterValidator(_clean_text), NO_NUL]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_clean_text), NO_NUL]
Url = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_clean_text), NO_NUL]


def _not_a_boolean(value: Any) -> Any:
    # Pydantic takes true and false for 1 and 0; the document says integer, and a client that
    # sends a boolean for a number is confused: refuse it (422), as for any other type.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


Id = Annotated[int, Field(ge=0, le=MAX_ID), BeforeValidator(_not_a_boolean)]


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


# --- shared bases: the fields a row and its public model have in common, with their columns ----


class CategoryBase(SQLModel):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str | None = Field(default=None, sa_column=Column(String(255), index=True))


class TagBase(SQLModel):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str | None = Field(default=None, sa_column=Column(String(255), index=True))


class OrderBase(SQLModel):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    # Not a foreign key: an order outlives the pet it was for, as a record of the sale.
    pet_id: int = Field(sa_column=Column(BigId, nullable=False, index=True))
    quantity: int = Field(default=1, sa_column=Column(Integer, nullable=False))
    # SQLite keeps no zone: read back, an instant is made UTC again (``_utc``), as it was stored.
    ship_date: Annotated[datetime, AfterValidator(_utc)] | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    status: str = Field(default=OrderStatus.placed, sa_column=Column(String(16), nullable=False))
    complete: bool = False


class UserBase(SQLModel):
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    username: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    first_name: str | None = Field(default=None, sa_column=Column(String(255)))
    last_name: str | None = Field(default=None, sa_column=Column(String(255)))
    email: str | None = Field(default=None, sa_column=Column(String(255)))
    phone: str | None = Field(default=None, sa_column=Column(String(255)))
    user_status: int | None = Field(default=None, sa_column=Column(Integer))


# --- tables -----------------------------------------------------------------------------------


class PetTagLink(SQLModel, table=True):
    __tablename__ = "pet_tag"
    # The primary key finds a pet's tags; this finds a tag's pets (``tag=`` of /pet/search, findByTags).
    __table_args__ = (Index("ix_pet_tag_tag_id", "tag_id", "pet_id"),)

    pet_id: int = Field(sa_column=Column(BigId, ForeignKey("pet.id", ondelete="CASCADE"), primary_key=True))
    tag_id: int = Field(sa_column=Column(BigId, ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True))


class Category(CategoryBase, table=True):
    pass


class Tag(TagBase, table=True):
    pass


class Pet(SQLModel, table=True):
    """No ``PetBase``: see the module docstring."""

    # The orders of /pet/search (migration 0004): by name then id, and a status's pets by id (an
    # index on status alone orders them by id on SQLite, where every index ends with the rowid,
    # but not on PostgreSQL). PostgreSQL also has a trigram index on name, out of these models
    # since it needs the pg_trgm extension (petstore.migrations.DATABASE_SPECIFIC_INDEXES);
    # SQLite has an FTS5 table of names instead (petstore.db.fulltext).
    __table_args__ = (
        # In code point order on PostgreSQL whatever the database's collation, as SQLite's BINARY
        # has names (migration 0005; ``ops`` is where SQLAlchemy lets a column's collation in).
        Index("ix_pet_name_id", "name", "id", postgresql_ops={"name": 'COLLATE "C"'}),
        Index("ix_pet_status_id", "status", "id"),
        NEVER_REUSE_IDS,
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    status: str = Field(default=PetStatus.available, sa_column=Column(String(16), nullable=False))
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


class User(UserBase, table=True):
    __tablename__ = "users"  # "user" is reserved in PostgreSQL
    __table_args__ = NEVER_REUSE_IDS

    # Only here: no public model derives from the table, so the hash cannot reach an answer.
    password_hash: str = Field(sa_column=Column(String(255), nullable=False), repr=False)
    role: str = Field(default=Role.customer, sa_column=Column(String(16), nullable=False))


class Order(OrderBase, table=True):
    __tablename__ = "purchase_order"  # "order" is a reserved word in SQL
    __table_args__ = NEVER_REUSE_IDS

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
    #: The context of the work that wrote it, for tracing plugins (``trace_context()``); usually null.
    trace_context: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))


# --- JSON bodies: what a client sends, with every write constraint -----------------------------


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


class OrderBody(ApiModel):
    """An order as a client places it (the Petstore ``Order`` schema)."""

    id: Id | None = None
    pet_id: Id
    quantity: Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_not_a_boolean)] = 1
    ship_date: UtcDateTime | None = None
    status: OrderStatus | None = None
    complete: bool | None = None


class OrderPatch(ApiModel):
    """What staff may change on an order (an extension: the Petstore document has no order update)."""

    status: OrderStatus | None = None
    complete: bool | None = None
    ship_date: UtcDateTime | None = None


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
    user_status: Annotated[int, Field(ge=-(2**31), le=INT32_MAX), BeforeValidator(_not_a_boolean)] | None = None


# --- public models: answers and event payloads, read from rows --------------------------------
# Built with ``Model.model_validate(row, from_attributes=True)``. They check types, not the bodies'
# write constraints: a row is shown as it is stored, even one an older version wrote past a limit
# set since (ids above MAX_ID, more than 100 photos).


class CategoryPublic(CategoryBase, ApiModel):
    pass


class TagPublic(TagBase, ApiModel):
    pass


def _by_id(tags: list[TagPublic]) -> list[TagPublic]:
    # By id, as the database returns them: a fresh pet and a reloaded one look the same.
    return sorted(tags, key=lambda tag: tag.id or 0)


class PetPublic(ApiModel):
    id: int
    name: str
    category: CategoryPublic | None = None
    photo_urls: list[str]
    tags: Annotated[list[TagPublic], AfterValidator(_by_id)]
    status: PetStatus


class OrderPublic(OrderBase, ApiModel):
    id: int
    status: OrderStatus


class UserPublic(UserBase, ApiModel):
    id: int


class ApiResponse(ApiModel):
    code: int
    type: str
    message: str
