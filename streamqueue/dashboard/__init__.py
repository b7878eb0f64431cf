"""The web dashboard: ``streamqueue dashboard`` / ``python -m streamqueue.dashboard``.

Needs the ``dashboard`` extra (Starlette, Jinja2, uvicorn); the core never
imports this package. Modules: ``app`` (``create_app``), ``routes`` (pages,
events, actions), ``guard`` (auth, read-only, security headers), ``auth``
(secrets, sessions, CSRF), ``config`` (what to serve, where it may listen),
``pages`` (what each page reads), ``summary`` (a queue's overview line),
``live`` (the one change stream behind every open page), ``rates``, ``format``,
``queues``, ``server`` (uvicorn).
"""
