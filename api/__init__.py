"""HTTP: the FastAPI application (events, results, review, operations) and the dashboard."""
