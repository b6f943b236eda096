"""Helpers shared by several test areas (not fixtures: plain functions and context managers)."""
