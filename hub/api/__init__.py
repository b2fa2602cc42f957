"""The installer's local web app and REST API (FastAPI), served by the hub on the home network."""
