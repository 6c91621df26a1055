"""Tradewarden services: one module per concept (see DESIGN §3)."""
