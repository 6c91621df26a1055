"""Broker adapters behind one interface (base.py): paper (default), Schwab, Coinbase, E*TRADE."""
