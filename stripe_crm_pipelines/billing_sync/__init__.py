"""Keeping contacts in step with Stripe after a full import: incremental sync from events."""
