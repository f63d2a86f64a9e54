"""``/pet``: the pets of the store (8 of the Petstore's operations)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.access import WRITE_PETS, Principal
from petstore.api.caching import conditional
from petstore.api.inputs import (
    LISTED_NAME,
    PAGE,
    check_names,
    id_param,
    limited_stream,
    pagination,
    path_id,
    query_list,
    read_body,
    read_data,
    read_model,
    validate,
)
from petstore.api.search import search_pets
from petstore.db import answers, sync_id_sequence
from petstore.db.queries import load_pet
from petstore.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType
from petstore.models import (
    ApiResponse,
    Category,
    CategoryBody,
    Pet,
    PetBody,
    PetPublic,
    PetStatus,
    PetTagLink,
    Tag,
    TagBody,
)
from petstore.operations import FORM, JSON, READ_ERRORS, Body, Param, operation, ref
from petstore.realtime import events
from petstore.state import AppState, app_state

# PetBody's limit on photoUrls: an upload must not make a pet that a client cannot PUT back.
MAX_PHOTOS = 100

_MULTIPART_FRAMING = 64 * 1024  # boundaries and part headers around the image itself

_IMAGE_TYPES = {
    b"\x89PNG\r\n\x1a\n": ".png",
    b"\xff\xd8\xff": ".jpg",
    b"GIF87a": ".gif",
    b"GIF89a": ".gif",
}

PET_ID = id_param("petId", "ID of the pet")
BAD_PET_ID = "Invalid ID supplied: not an integer, or out of range"
# A URL-encoded form is flat: PetForm has the Pet fields a form can carry.
PET_CONTENT = {JSON: ref("Pet"), FORM: ref("PetForm")}
PETS = {"type": "array", "items": ref("Pet")}
PET_LINKS = {
    op: {"petId": "$response.body#/id"} for op in ("getPetById", "updatePetWithForm", "uploadFile", "deletePet")
}


def pet_json(pet: Pet) -> JSONResponse:
    return JSONResponse(PetPublic.model_validate(pet, from_attributes=True).model_dump(mode="json", by_alias=True))


_Named = TypeVar("_Named", Category, Tag)


async def _named(
    session: AsyncSession, model: type[_Named], body: CategoryBody | TagBody, sequence: str
) -> _Named | None:
    """The category or tag a body names: by id (made with that id if missing, renamed if the body
    names it otherwise), else by name (made if missing); None when it names neither."""
    if body.id is not None:
        row = await session.get(model, body.id)
        if row is None:
            row = model.model_validate(body)
            session.add(row)
            await session.flush()
            await sync_id_sequence(session, sequence)
        elif body.name is not None:
            row.name = body.name
        return row
    if body.name is None:
        return None
    query = select(model).where(model.name == body.name).limit(1)  # type: ignore[arg-type]
    found = (await session.execute(query)).scalar_one_or_none()
    if found is None:
        found = model.model_validate(body)
        session.add(found)
        await session.flush()
    return found


async def _category(session: AsyncSession, body: CategoryBody | None) -> Category | None:
    return None if body is None else await _named(session, Category, body, "category")


async def _tags(session: AsyncSession, bodies: list[TagBody]) -> list[Tag]:
    tags: dict[int | str, Tag] = {}
    # Tags named without ids, the usual body, are looked up in one query, not one each: the
    # first of each name by id, as the query per tag found it. A body with an id may rename a
    # tag that a later one names, so with any id the tags are taken one by one, in order.
    known = await _by_name(session, bodies) if all(body.id is None for body in bodies) else {}
    for body in bodies:
        tag = known.get(body.name) if body.name is not None else None
        if tag is None:
            tag = await _named(session, Tag, body, "tag")
        if tag is not None:
            assert tag.id is not None or tag.name is not None
            tags[tag.id if tag.id is not None else f"name:{tag.name}"] = tag
    return list(tags.values())


async def _by_name(session: AsyncSession, bodies: list[TagBody]) -> dict[str, Tag]:
    names = {body.name for body in bodies if body.name is not None}
    if not names:
        return {}
    query = select(Tag).where(col(Tag.name).in_(names)).order_by(col(Tag.id))
    found = (await session.execute(query)).scalars().all()
    first: dict[str, Tag] = {}
    for tag in found:
        assert tag.name is not None
        first.setdefault(tag.name, tag)
    return first


async def apply_body(session: AsyncSession, pet: Pet, body: PetBody) -> None:
    """Set ``pet`` from ``body``, its category and tags looked up (or made) first.

    First, so that the pet's own changes go in with one statement at the end: a category or tag
    made here is flushed at once (for its id), and so would be whatever of the pet had changed
    already, then written again. A new pet is added to the session after this, for the same
    reason (:func:`create_pet`)."""
    category = await _category(session, body.category)
    tags = await _tags(session, body.tags)
    pet.name = body.name
    pet.photo_urls = list(body.photo_urls)
    if body.status is not None:
        pet.status = body.status.value
    pet.category = category
    pet.tags = tags


async def commit(state: AppState, session: AsyncSession) -> None:
    """Commit and wake the relay. The pet stays loaded (no expiry on commit): the answer is what
    this transaction wrote, as its events say, without reading it back."""
    await session.commit()
    state.outbox_wakeup.set()


async def _updated(state: AppState, session: AsyncSession, pet: Pet, old_status: str) -> None:
    """Record a changed pet's events (the inventory's only when its status changed) and commit."""
    await session.flush()
    events.pet_event(session, "pet.updated", PetPublic.model_validate(pet, from_attributes=True))
    if pet.status != old_status:
        events.inventory_changed(session)
    await commit(state, session)


async def create_pet(session: AsyncSession, body: PetBody, *, inventory: bool = True) -> Pet:
    """Insert a pet and record its events: shared by ``addPet`` and ``petstore seed``. The caller commits.

    ``inventory=False`` leaves ``inventory.changed`` to the caller, who records one per batch.
    """
    if body.id is not None and await session.get(Pet, body.id) is not None:
        raise Conflict(f"pet {body.id} already exists")
    pet = Pet(id=body.id, name=body.name, tags=[])  # apply_body sets the rest; no status sent: the default
    await apply_body(session, pet, body)
    session.add(pet)
    await session.flush()
    if body.id is not None:
        await sync_id_sequence(session, "pet")
    events.pet_event(session, "pet.created", PetPublic.model_validate(pet, from_attributes=True))
    if inventory:
        events.inventory_changed(session)
    return pet


@operation(
    "POST",
    "/pet",
    "addPet",
    permission=WRITE_PETS,
    tag="pet",
    summary="Add a new pet to the store.",
    description="Staff and admins. Without an id, the server assigns one.",
    body=Body(PET_CONTENT, "Create a new pet in the store"),
    ok=ref("Pet"),
    links=PET_LINKS,
    errors={409: "A pet with this id exists"},
)
async def add_pet(request: Request, who: Principal) -> Response:
    body = await read_model(request, PetBody, form=True)
    state = app_state(request)
    async with state.sessions() as session:
        pet = await create_pet(session, body)
        await commit(state, session)
    return pet_json(pet)


@operation(
    "PUT",
    "/pet",
    "updatePet",
    permission=WRITE_PETS,
    tag="pet",
    summary="Update an existing pet.",
    description="Update an existing pet by id (staff and admins).",
    body=Body(PET_CONTENT, "The pet, with its id"),
    ok=ref("Pet"),
    links=PET_LINKS,
    errors={400: "or the pet's id is missing", 404: "Pet not found"},
)
async def update_pet(request: Request, who: Principal) -> Response:
    body = await read_model(request, PetBody, form=True)
    if body.id is None:
        raise BadRequest("invalid ID supplied: the pet's id is required")
    state = app_state(request)
    async with state.sessions() as session:
        pet = await load_pet(session, body.id)
        old_status = pet.status
        await apply_body(session, pet, body)
        await _updated(state, session, pet, old_status)
    return pet_json(pet)


@operation(
    "GET",
    "/pet/findByStatus",
    "findPetsByStatus",
    permission=None,
    tag="pet",
    summary="Finds Pets by status.",
    description="`status=a,b` and `status=a&status=b` alike; `available` when absent. Ordered by id.",
    params=(
        Param(
            "status",
            "query",
            {"type": "array", "items": ref("PetStatus"), "default": ["available"]},
            "Status values to consider",
        ),
        *PAGE,
    ),
    ok=PETS,
    errors={400: "Invalid status value, limit or offset"},
)
async def find_by_status(request: Request) -> Response:
    statuses = query_list(request, "status")
    if not statuses and "status" in request.query_params:
        raise BadRequest("invalid status value: empty (leave status out for available)")
    statuses = statuses or [PetStatus.available.value]
    invalid = [s for s in statuses if s not in PetStatus.__members__]
    if invalid:
        raise BadRequest(f"invalid status value: {invalid[0][:40]!r} (use available, pending or sold)")
    padded = [*statuses, *[statuses[0]] * len(PetStatus)][: len(PetStatus)]
    return await _list_pets(request, _by_status, **{f"status{n}": status for n, status in enumerate(padded)})


#: A pet's name, as updatePetWithForm takes it from a query or a form (the Pet model's Name).
PET_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00]*$"}


@operation(
    "GET",
    "/pet/findByTags",
    "findPetsByTags",
    permission=None,
    tag="pet",
    summary="Finds Pets by tags.",
    description="Pets with any of the tags: `tags=a,b` and `tags=a&tags=b` alike. Ordered by id.",
    params=(
        Param(
            "tags",
            "query",
            {"type": "array", "items": LISTED_NAME, "minItems": 1},
            "Tag names to filter by",
            required=True,
        ),
        *PAGE,
    ),
    ok=PETS,
    errors={400: "No tag given, a tag longer than 255 characters, or an invalid limit or offset"},
)
async def find_by_tags(request: Request) -> Response:
    names = query_list(request, "tags")
    if not names:
        raise BadRequest("invalid tag value: give at least one tag")
    check_names(names, "tag")
    return await _list_pets(request, _by_tags, tags=names)


def _page(dialect: str, condition: ColumnElement[bool]) -> Select[Any]:
    """A page of the pets matching ``condition``, by id, as their JSON (:mod:`petstore.db.answers`)."""
    query = answers.pets_query(dialect).where(condition).order_by(col(Pet.id))
    return query.limit(bindparam("limit")).offset(bindparam("offset"))


@cache
def _by_status(dialect: str) -> Select[Any]:
    # One parameter per status there is, not an IN list (which only the engine can expand, see
    # petstore.db.reader): fewer statuses asked repeat the first.
    return _page(dialect, col(Pet.status).in_([bindparam(f"status{n}") for n in range(len(PetStatus))]))


@cache
def _by_tags(dialect: str) -> Select[Any]:
    named = col(Tag.name).in_(bindparam("tags", expanding=True))
    tagged = select(col(PetTagLink.pet_id)).join(Tag, col(Tag.id) == col(PetTagLink.tag_id)).where(named)
    return _page(dialect, col(Pet.id).in_(tagged))


async def _list_pets(request: Request, query: Callable[[str], Select[Any]], **parameters: Any) -> Response:
    """One page of ``query``'s pets in one query, whose rows are the pets' JSON."""
    limit, offset = pagination(request)
    state = app_state(request)
    rows = await state.reader.column(query(state.engine.dialect.name), {"limit": limit, "offset": offset, **parameters})
    return Response(answers.json_array(rows), media_type=answers.JSON_TYPE)


@operation(
    "GET",
    "/pet/{petId}",
    "getPetById",
    permission=None,
    tag="pet",
    summary="Find pet by ID.",
    params=(PET_ID,),
    ok=ref("Pet"),
    errors={400: BAD_PET_ID, 404: "Pet not found"},
    etag=True,
)
async def get_pet(request: Request) -> Response:
    pet_id = path_id(request, "petId", "pet")
    state = app_state(request)
    found = await state.reader.column(answers.pet_by_id(state.engine.dialect.name), {"pet_id": pet_id})
    if not found:
        raise NotFound(f"pet {pet_id} not found")
    return conditional(request, Response(found[0].encode(), media_type=answers.JSON_TYPE))


@operation(
    "POST",
    "/pet/{petId}",
    "updatePetWithForm",
    permission=WRITE_PETS,
    tag="pet",
    summary="Updates a pet in the store with form data.",
    description="`name` and `status` from the query string or a form body (the form wins). Staff and admins.",
    params=(
        PET_ID,
        Param("name", "query", PET_NAME, "New name of the pet"),
        Param("status", "query", ref("PetStatus"), "New status of the pet"),
    ),
    # Read when the Content-Type starts as a form's (one that only starts so is a 415).
    body=Body(
        {
            FORM: {
                "type": "object",
                "properties": {
                    "name": PET_NAME,
                    "status": ref("PetStatus"),
                },
            }
        },
        required=False,
        errors={status: READ_ERRORS[status] for status in (413, 415)},
    ),
    ok=ref("Pet"),
    errors={
        400: BAD_PET_ID + "; invalid status value; or a form body that is not UTF-8",
        404: "Pet not found",
        422: "Invalid name",
    },
)
async def update_pet_with_form(request: Request, who: Principal) -> Response:
    pet_id = path_id(request, "petId", "pet")
    fields = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = await read_data(request, form=True)
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    name, status = fields.get("name"), fields.get("status")
    if status is not None and status not in PetStatus.__members__:
        raise BadRequest(f"invalid status value: {status[:40]!r}")
    if name is not None:
        validate(PetBody, {"name": name, "photoUrls": []})  # same rules for the name as everywhere
    state = app_state(request)
    async with state.sessions() as session:
        pet = await load_pet(session, pet_id)
        old_status = pet.status
        if name is not None:
            pet.name = name
        if status is not None:
            pet.status = status
        await _updated(state, session, pet, old_status)
    return pet_json(pet)


@operation(
    "DELETE",
    "/pet/{petId}",
    "deletePet",
    permission=WRITE_PETS,
    tag="pet",
    summary="Deletes a pet.",
    description="Staff and admins.",
    params=(PET_ID,),
    ok=ref("ApiResponse"),
    errors={400: BAD_PET_ID, 404: "Pet not found"},
)
async def delete_pet(request: Request, who: Principal) -> Response:
    pet_id = path_id(request, "petId", "pet")
    state = app_state(request)
    async with state.sessions() as session:
        pet = await session.get(Pet, pet_id)
        if pet is None:
            raise NotFound(f"pet {pet_id} not found")
        await session.delete(pet)
        events.pet_deleted(session, pet_id)
        events.inventory_changed(session)
        await session.commit()
    state.outbox_wakeup.set()
    return JSONResponse(ApiResponse(code=200, type="ok", message=f"pet {pet_id} deleted").model_dump())


def _image_suffix(data: bytes) -> str:
    for magic, suffix in _IMAGE_TYPES.items():
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    raise UnsupportedMediaType("not a PNG, JPEG, GIF or WebP image")


async def _read_multipart_file(request: Request, limit: int) -> bytes:
    """The one file of a multipart body. ``request.form()`` would spool a file part of any size to
    disk; reading through ``limited_stream`` stops at the limit (plus room for the framing)."""
    stream = limited_stream(request, limit + _MULTIPART_FRAMING)
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=10, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    finally:
        await stream.aclose()
    try:
        upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise BadRequest("no file uploaded")
        return await upload.read(limit + 1)
    finally:
        await form.close()


@operation(
    "POST",
    "/pet/{petId}/uploadImage",
    "uploadFile",
    permission=WRITE_PETS,
    tag="pet",
    summary="Uploads an image.",
    description="Stores a PNG, JPEG, GIF or WebP image, sent as the body or as the file of a multipart form, "
    "and appends its URL to the pet's `photoUrls`. Staff and admins.",
    params=(PET_ID, Param("additionalMetadata", "query", {"type": "string"}, "Additional metadata")),
    # Not read_model's: the statuses are this handler's own.
    body=Body(
        {
            "application/octet-stream": {"type": "string", "format": "binary"},
            "multipart/form-data": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            },
        },
        errors={},
    ),
    ok=ref("ApiResponse"),
    errors={
        400: BAD_PET_ID + "; no file uploaded; or a malformed multipart body",
        404: "Pet not found",
        409: "The pet already has as many photos as a pet may have",
        413: "Image larger than the server accepts",
        415: "Not a PNG, JPEG, GIF or WebP image, or a Content-Type not accepted",
    },
)
async def upload_image(request: Request, who: Principal) -> Response:
    pet_id = path_id(request, "petId", "pet")
    state = app_state(request)
    limit = state.settings.max_image_bytes
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        data = await _read_multipart_file(request, limit)
    elif media in ("application/octet-stream", "image/png", "image/jpeg", "image/gif", "image/webp", ""):
        data = await read_body(request, limit)
    else:
        raise UnsupportedMediaType("send application/octet-stream or multipart/form-data")
    if not data:
        raise BadRequest("no file uploaded")
    if len(data) > limit:
        raise PayloadTooLarge(f"image larger than {limit} bytes")
    suffix = _image_suffix(data)
    async with state.sessions() as session:
        pet = await load_pet(session, pet_id)
        if len(pet.photo_urls) >= MAX_PHOTOS:
            raise Conflict(f"pet {pet_id} already has {MAX_PHOTOS} photos")
        name = f"{secrets.token_hex(12)}{suffix}"
        folder = Path(state.settings.media_dir) / "pets" / str(pet_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        url = f"/media/pets/{pet_id}/{name}"
        pet.photo_urls = [*pet.photo_urls, url]
        await session.flush()
        events.pet_event(session, "pet.updated", PetPublic.model_validate(pet, from_attributes=True))
        await session.commit()
    state.outbox_wakeup.set()
    message = f"image stored at {url}"
    additional = request.query_params.get("additionalMetadata")
    if additional:
        message += f"; additionalMetadata: {additional[:200]}"
    return JSONResponse(ApiResponse(code=200, type="ok", message=message).model_dump())


def routes(prefix: str) -> list[Route]:
    # /pet/findBy* and /pet/search before /pet/{petId}, which would take them.
    operations = [
        add_pet,
        update_pet,
        find_by_status,
        find_by_tags,
        search_pets,
        get_pet,
        update_pet_with_form,
        delete_pet,
        upload_image,
    ]
    return [operation.route(prefix) for operation in operations]
