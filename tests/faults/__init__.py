"""The fault toolkit and the fault matrix of SPEC §6 (issue 10), as tests.

- ``proxy.TcpProxy``: a TCP proxy to put between petstore and Redis or PostgreSQL, which can go
  silent, reset, refuse, delay, or reset one connection in the middle of a stream.
- ``redis``: Redis faults on a ``tests.services.RedisServer``: fast and slow restarts, with or
  without AOF persistence, freeze (SIGSTOP) and thaw (SIGCONT).
- ``test_proxy``: the proxy itself, against a local echo server.
- ``test_redis_faults``: the Redis rows of the matrix, on real uvicorn servers and a real Redis.
"""
