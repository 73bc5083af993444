"""The portal's pages beyond the analyst's (services/portal/api.py), one module per area; each
module's ``routes`` are mounted under /portal by services/portal/app.py."""
