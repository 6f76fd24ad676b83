"""The web UI: static assets (``static/``, plain JS/CSS, no build step) and the routes that
serve them with a small API over the trace store (``routes.ui_routes``)."""
