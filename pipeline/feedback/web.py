"""What the feedback app's server and its HTML pages share: the login cookie's name and the
page templates."""

from __future__ import annotations

import os

from fastapi.templating import Jinja2Templates

COOKIE = "rayppo_feedback"
TEMPLATES = Jinja2Templates(directory=os.path.join(os.path.dirname(__file__), "templates"))
