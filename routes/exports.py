"""Exports pages."""
from flask import Blueprint

bp = Blueprint("exports_page", __name__, url_prefix="/exports")
