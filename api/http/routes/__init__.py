"""Every route of the API, one module per resource group."""

from modelsieve.api.http.routes import health, meta

ROUTES = (*health.ROUTES, *meta.ROUTES)
