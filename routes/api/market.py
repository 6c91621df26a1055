"""API: market."""
from flask import Blueprint

bp = Blueprint("market", __name__)
