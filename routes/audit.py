"""Audit log pages: /audit (own events) and /admin/audit (all, admins)."""
from flask import Blueprint

bp = Blueprint("audit", __name__)
