"""The monitor on FastAPI + Jinja2, served by uvicorn (issue 12): see :mod:`monitor.web.app`."""
