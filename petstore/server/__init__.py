"""What ``petstore serve`` adds to uvicorn, and the only code that knows uvicorn's internals.

- :mod:`uvicorn_http`: the httptools protocol with the bounds uvicorn lacks (header size, header
  and body read timeouts, eviction at the concurrency limit);
- :mod:`uvicorn_ws`: uvicorn's sans-I/O WebSocket protocol with a direct write for the hub;
- :mod:`shutdown`: the drain that begins when uvicorn stops listening.

The app runs under any ASGI server without them; they offer the extensions named in
:mod:`petstore.realtime`, which never imports this package.
"""
