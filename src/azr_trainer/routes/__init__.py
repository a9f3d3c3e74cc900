"""The studio's HTTP layer, one module per page: ``studio`` (the page, health, settings),
``books``, ``models`` (plan, estimate, checkpoints, downloads), ``runs`` (events, stream,
buffers) and ``generate``, each an APIRouter; ``requests`` holds the request bodies, ``guard``
the token/origin guard and body limit, ``handlers`` the error answers, ``state`` the one
``Studio`` object (on ``app.state``) the routes reach through a dependency. server.create_app
puts them together."""

from . import books, generate, models, runs, studio

ROUTERS = (studio.router, books.router, models.router, runs.router, generate.router)
