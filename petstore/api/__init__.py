"""The Swagger Petstore v3 REST API under ``/api/v3``: pets, store orders, users.

Each module declares its operations beside their handlers (:mod:`petstore.operations`: the
permission check and what the document says) and routes them in ``routes(prefix)``; :mod:`inputs`
reads request bodies, queries and path ids safely; :mod:`openapi` builds the document from the
routed declarations and :mod:`docs` serves Swagger UI. The endpoints record their events
through :mod:`petstore.realtime` and read shared rows through :mod:`petstore.db.queries`;
nothing below them imports them.
"""
