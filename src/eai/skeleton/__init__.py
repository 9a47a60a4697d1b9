"""Skeleton layouts and the unified canonical skeleton."""
