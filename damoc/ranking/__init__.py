"""Ranking: turn per-candidate scores into rankings and measure agreement between rankings."""
