"""Every route of the API, one module per resource group."""

from modelsieve.api.http.routes import health, lists, match, meta

ROUTES = (*health.ROUTES, *match.ROUTES, *lists.ROUTES, *meta.ROUTES)
