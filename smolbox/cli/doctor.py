"""`smolbox doctor` (implemented by the foundation work; see smolbox/host/doctor.py)."""
