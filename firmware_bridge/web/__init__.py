"""The head's operator web page (``glass-inspect serve --web HOST:PORT``; docs/web.md).

:mod:`~firmware_bridge.web.app` the pages, :mod:`~firmware_bridge.web.guard` what limits and
protects them, :mod:`~firmware_bridge.web.pictures` their pictures,
:mod:`~firmware_bridge.web.server` the thread that serves them. The page reads only what the
inspection service publishes (:mod:`firmware_bridge.web_state`). Needs the ``web`` extra
(Starlette, uvicorn, Jinja2, python-multipart).
"""
