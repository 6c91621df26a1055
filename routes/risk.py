"""Risk pages."""
from flask import Blueprint

bp = Blueprint("risk_page", __name__, url_prefix="/settings/risk")
