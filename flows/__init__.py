"""Prefect orchestration of the DVC pipeline: flows/speedrun.py (the flow), flows/prefect.yaml (deployments)."""
