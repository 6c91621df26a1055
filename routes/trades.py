"""Trades pages."""
from flask import Blueprint

bp = Blueprint("trades", __name__, url_prefix="/trades")
