"""Api_keys pages."""
from flask import Blueprint

bp = Blueprint("api_keys_page", __name__, url_prefix="/settings/api-keys")
