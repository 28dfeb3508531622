"""Commands a user runs or submits with ``ray job submit``: data -> train -> evaluate -> register."""
