"""API: brokers."""
from flask import Blueprint

bp = Blueprint("brokers", __name__)
