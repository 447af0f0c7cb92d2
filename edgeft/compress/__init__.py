"""Compression station: transfer a teacher's knowledge into a small student with few data."""
