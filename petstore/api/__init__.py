"""The Swagger Petstore v3 REST API under ``/api/v3``: pets, store orders, users.

Each module's ``routes(prefix)`` gives its operations; :mod:`inputs` reads request bodies,
queries and path ids safely; :mod:`openapi` serves the document and :mod:`docs` Swagger UI. The
endpoints record their events through :mod:`petstore.realtime` and read shared rows through
:mod:`petstore.db.queries`; nothing below them imports them.
"""
