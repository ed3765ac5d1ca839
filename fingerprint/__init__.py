"""Readers for model files, whole-file digests and fuzzy tensor fingerprints.

This is the bottom layer of modelsieve: it turns hostile model files into tensors, digests and
fingerprints. Nothing here knows about hashlists, crawling or HTTP.
"""
