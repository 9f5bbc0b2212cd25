"""The personalization server, `flythinker serve` (being built): so far its profile store (store.py)."""
