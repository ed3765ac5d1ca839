"""Every route of the API, one module per resource group."""

from modelsieve.api.http.routes import crawl, health, lists, match, meta

ROUTES = (*health.ROUTES, *match.ROUTES, *crawl.ROUTES, *lists.ROUTES, *meta.ROUTES)
