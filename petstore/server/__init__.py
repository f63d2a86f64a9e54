"""What ``petstore serve`` adds to uvicorn, and the only code that knows uvicorn's internals.

- :mod:`uvicorn_http`: the httptools protocol with the bounds uvicorn lacks (header size, header
  and body read timeouts, eviction at the concurrency limit);
- :mod:`uvicorn_ws`: uvicorn's sans-I/O WebSocket protocol with a direct write for the hub;
- :mod:`shutdown`: the drain that begins when uvicorn stops listening;
- :mod:`workers`: uvicorn's multiprocess supervisor, telling plugins about workers that exit.

uvicorn's protocol and supervisor classes are its implementation, not its API: each module that
extends one names what it uses of it in its ``USES``, checked when it is imported
(:mod:`petstore.internals`), so a uvicorn release that changed them is refused before it serves.

The app runs under any ASGI server without them; they offer the extensions named in
:mod:`petstore.realtime`, which never imports this package.
"""
