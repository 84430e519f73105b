"""Shared fixtures: a real journald, panicd daemons, guests under test."""
