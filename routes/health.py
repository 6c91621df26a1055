"""Health pages."""
from flask import Blueprint

bp = Blueprint("health", __name__, url_prefix="/health")
