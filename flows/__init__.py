"""Prefect flows and deployments: wiring, retries, schedules, artifacts. No business logic here."""
