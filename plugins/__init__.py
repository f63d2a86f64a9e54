"""Plugins shipped with petstore: auth, rate limiting, metrics. The core never imports this package."""
