"""API: meta."""
from flask import Blueprint

bp = Blueprint("meta", __name__)
