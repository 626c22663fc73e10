"""Ranking service."""
