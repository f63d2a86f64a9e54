"""The auth plugin's Alembic branch (label ``auth``): one revision file per change, run by ``petstore migrate``."""
