"""The web microscope: FastAPI app, typed requests, security, job queue, static page."""
