"""Brokers pages."""
from flask import Blueprint

bp = Blueprint("brokers_page", __name__, url_prefix="/brokers")
