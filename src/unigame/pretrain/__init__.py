"""Offline pre-training of the small helper models the toolkit needs (e.g. the tiny CLIP scorer)."""
