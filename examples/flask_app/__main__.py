"""``python -m examples.flask_app``: the app on Flask's development server, port 5000."""

from examples.flask_app import create_app

create_app().run()
