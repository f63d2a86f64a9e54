"""petstore: a real-time Swagger Petstore v3 server."""

__version__ = "0.1.0"
