"""Metrics, traces, audit events and logging."""
