"""Local fake brokers (Schwab, Coinbase, E*TRADE) speaking each broker's wire format on loopback ports.

Used by tests/brokers and by `python -m tests.fakes.serve` for a demo (`make run FAKE_BROKERS=1`).
"""
